"""Image transforms with Pillow/numpy (torchvision is not installable beside torch 2.13 here).

Training: random resized crop (scale 0.9-1.0, bicubic), OpenAI mean/std. Evaluation: resize the
short side + centre crop. Undecodable images and decompression bombs raise `BadImage`, which
the stream counts as a drop instead of crashing.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from worldclip.models import presets

OPENAI_MEAN = np.array(presets.OPENAI_MEAN, dtype=np.float32)
OPENAI_STD = np.array(presets.OPENAI_STD, dtype=np.float32)
MAX_PIXELS = 64_000_000  # decoded images above this are rejected (decompression bombs)


class BadImage(ValueError):
    pass


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode to RGB; reject what is not an image or would decode to > max_pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise BadImage(f"image {img.width}x{img.height} exceeds {max_pixels} pixels")
            img.draft("RGB", (img.width, img.height))
            return img.convert("RGB")
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise BadImage(f"undecodable image: {e}") from None


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop semantics (10 tries, then centre crop), bicubic."""
    w, h = img.size
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    return center_crop(img, size)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to size (bicubic) and crop the centre."""
    w, h = img.size
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + s, y + s))


def normalize(img: Image.Image) -> np.ndarray:
    """HWC uint8 -> CHW float32, OpenAI mean/std."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    return ((a - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)


def train_transform(data: bytes, size: int, rng: np.random.Generator,
                    scale_min: float = 0.9) -> np.ndarray:
    return normalize(random_resized_crop(decode(data), size, rng, (scale_min, 1.0)))


def eval_transform(data: bytes, size: int) -> np.ndarray:
    return normalize(center_crop(decode(data), size))
