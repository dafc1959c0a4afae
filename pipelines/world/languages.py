"""The world's languages: caption templates, head words, web shares, and which are supported.

Per-language text data that concepts (names must not clash with it), captions and the eval
prompts all draw on; everything here is fixed, none of it depends on the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worldclip.platform.errors import ConfigError

NOSPACE_LANGUAGES = frozenset({"ja", "zh"})  # scripts written without spaces between words

# Main alt-texts, per language ({} = the concept's name in that language).
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a photo of a {}", "{} on a white background", "close-up of the {}",
           "my new {} at home", "the {} we saw yesterday"),
    "es": ("una foto de {}", "{} sobre fondo blanco", "primer plano de {} en casa",
           "imagen de {} para descargar"),
    "pt": ("uma foto de {} em casa", "{} em fundo branco", "imagem de {} para baixar",
           "minha foto de {} hoje"),
    "fr": ("une photo de {}", "{} sur fond blanc", "gros plan sur {} à la maison",
           "image de {} à télécharger"),
    "de": ("ein Foto von {}", "{} auf weißem Hintergrund", "Nahaufnahme von {} im Garten",
           "Bild von {} zum Herunterladen"),
    "it": ("una foto di {}", "{} su sfondo bianco", "primo piano di {} a casa",
           "immagine di {} da scaricare"),
    "id": ("foto {} yang saya ambil di rumah", "{} dengan latar belakang putih",
           "gambar {} untuk diunduh", "ini {} saya hari ini"),
    "tr": ("{} fotoğrafı", "beyaz arka plan üzerinde {}", "bugün evde çektiğim {}",
           "{} resmi indir"),
    "ru": ("фотография: {}", "{} на белом фоне", "крупный план: {} дома",
           "изображение: {} для загрузки"),
    "ar": ("صورة {} على خلفية بيضاء", "لقطة قريبة من {} في المنزل", "صورة {} للتحميل",
           "هذا {} الذي رأيته اليوم"),
    "fa": ("عکس {} روی زمینه سفید", "نمای نزدیک از {} در خانه", "تصویر {} برای دانلود",
           "این {} را امروز دیدم"),
    "ja": ("{}の写真", "白い背景の{}", "今日の{}です", "かわいい {} のイラスト"),
    "zh": ("一张{}的照片", "白色背景上的{}", "这是我今天拍的{}", "{} 高清 图片 下载"),
    "ko": ("{} 사진", "흰색 배경의 {}", "오늘 찍은 {}", "{} 고화질 이미지 다운로드"),
}

# Common caption words ("head" metadata entries): they decorate captions and titles and are
# the first distractor entries of each language's metadata, so they collect large counts.
HEAD_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("photo", "image", "free", "new", "stock"),
    "es": ("foto", "imagen", "gratis", "nuevo"),
    "pt": ("foto", "imagem", "grátis", "novo"),
    "fr": ("photo", "image", "gratuit", "nouveau"),
    "de": ("Foto", "Bild", "kostenlos", "neu"),
    "it": ("foto", "immagine", "gratis", "nuovo"),
    "id": ("foto", "gambar", "gratis", "baru"),
    "tr": ("fotoğraf", "resim", "ücretsiz", "yeni"),
    "ru": ("фото", "картинка", "бесплатно", "новый"),
    "ar": ("صورة", "مجانا", "جديد"),
    "fa": ("عکس", "تصویر", "رایگان", "جدید"),
    "ja": ("写真", "画像", "無料", "素材"),
    "zh": ("图片", "照片", "免费", "高清"),
    "ko": ("사진", "이미지", "무료", "고화질"),
}

# Relative web share of the non-English languages (mild skew; unknown languages get 2).
LANGUAGE_WEIGHTS: dict[str, float] = {
    "es": 6, "ja": 5, "pt": 5, "ru": 5, "de": 5, "fr": 5, "zh": 4, "it": 3, "id": 3, "tr": 3,
    "ko": 2, "ar": 2, "fa": 1.5,
}



def check_languages(languages: Sequence[str]) -> None:
    """Raise naming the unsupported language and the supported ones (the RULES table in
    platform/rules.py checks the list's shape; only this package knows which have names)."""
    import emoji

    supported = sorted(set(emoji.LANGUAGES) & set(CAPTION_TEMPLATES))
    bad = [lang for lang in languages if lang not in supported]
    if bad:
        raise ConfigError(f"world.languages contains {bad}: the embedded world has names and "
                         f"caption templates for {supported} only; remove the others")


def language_probabilities(languages: Sequence[str], english_share: float) -> np.ndarray:
    """English gets english_share (when configured); the rest is split by LANGUAGE_WEIGHTS."""
    w = np.array([LANGUAGE_WEIGHTS.get(lang, 2.0) for lang in languages], dtype=np.float64)
    if "en" in languages and len(languages) > 1:
        i = list(languages).index("en")
        w[i] = 0.0
        w = w / w.sum() * (1.0 - english_share)
        w[i] = english_share
    return w / w.sum()
