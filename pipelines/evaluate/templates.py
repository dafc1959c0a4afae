"""Prompt templates for zero-shot classes: languages an eval set brings none for get these
(evalsets.py `_read_templates`), then FALLBACK_TEMPLATES (the bare class name)."""

from __future__ import annotations

# Prompt templates for languages an eval set brings none for ("a photo of a {}." in the
# languages of the embedded world; wordings that need no inflection of the class name).
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "en": ["a photo of a {}.", "a photo of the {}.", "an image of a {}.", "a picture of a {}."],
    "de": ["ein Foto von {}.", "ein Bild von {}."],
    "es": ["una foto de {}.", "una imagen de {}."],
    "fr": ["une photo de {}.", "une image de {}."],
    "it": ["una foto di {}.", "un'immagine di {}."],
    "pt": ["uma foto de {}.", "uma imagem de {}."],
    "id": ["foto {}.", "gambar {}."],
    "tr": ["{} fotoğrafı.", "{} resmi."],
    "ru": ["фотография: {}.", "изображение: {}."],
    "ar": ["صورة {}."],
    "fa": ["عکس {}.", "تصویر {}."],
    "ja": ["{}の写真。", "{}の画像。"],
    "zh": ["{}的照片。", "一张{}的图片。"],
    "ko": ["{} 사진.", "{}의 사진."],
}
FALLBACK_TEMPLATES = ["{}"]
