"""The images: a 64 px picture per pair, drawn from its concept's signature.

A signature is (background colour, shape or texture, foreground colour), distinct per
concept; each render adds random position, scale, colour jitter, sensor noise and sometimes
a clutter blob -- learnable by a tiny CLIP on CPU, not trivially. Junk pairs get blocky noise.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from worldclip.pipelines.world.seeds import STREAM_SIGNATURES
from worldclip.platform.errors import ConfigError

CLUTTER_SHARE = 0.35  # images with a small random-colour distractor blob

PALETTE = np.array([
    (220, 40, 40), (40, 170, 60), (40, 80, 220), (240, 210, 40), (140, 60, 180),
    (245, 140, 30), (40, 200, 210), (240, 120, 180), (240, 240, 240), (25, 25, 25),
    (130, 80, 40), (128, 128, 128)], dtype=np.float32)
SHAPES = ("circle", "square", "triangle", "cross", "ring", "hstripes", "vstripes", "checker",
          "dots", "diamond", "diagonal", "frame")


def concept_signatures(n: int, seed: int) -> np.ndarray:
    """(background colour, shape, foreground colour) per concept, all distinct, fg != bg."""
    p, s = len(PALETTE), len(SHAPES)
    combos = np.array([(b, sh, f) for b in range(p) for sh in range(s) for f in range(p)
                       if b != f], dtype=np.int64)
    if n > len(combos):
        raise ConfigError(f"world.concepts={n}: at most {len(combos)} distinct image signatures")
    order = np.random.default_rng([seed, STREAM_SIGNATURES]).permutation(len(combos))
    return combos[order[:n]]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # x, y, noise per size


def _shape_mask(shape: int, dx: np.ndarray, dy: np.ndarray, r: float,
                phase: float) -> np.ndarray:
    name = SHAPES[shape]
    adx, ady = np.abs(dx), np.abs(dy)
    box = np.maximum(adx, ady) < r
    if name == "circle":
        return dx * dx + dy * dy < r * r
    if name == "square":
        return box
    if name == "triangle":
        return (dy < r * 0.8) & (dy > -r) & (adx < (dy + r) * 0.6)
    if name == "cross":
        return box & ((adx < r * 0.3) | (ady < r * 0.3))
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    period = r / 2.0
    if name == "hstripes":
        return box & (((dy + phase) / period) % 2.0 < 1.0)
    if name == "vstripes":
        return box & (((dx + phase) / period) % 2.0 < 1.0)
    if name == "checker":
        return box & (((np.floor((dx + phase) / period) + np.floor(dy / period)) % 2) == 0)
    if name == "dots":
        gx = ((dx + phase) / period) % 1.0 - 0.5
        gy = (dy / period) % 1.0 - 0.5
        return box & (gx * gx + gy * gy < 0.09)
    if name == "diamond":
        return adx + ady < r * 1.2
    if name == "diagonal":
        return box & (((dx + dy + phase) / period) % 2.0 < 1.0)
    return box & (np.maximum(adx, ady) > r * 0.65)  # frame


def _noise_bank(size: int) -> np.ndarray:
    """A fixed tile of sensor noise, twice the image size; images add a random window of it
    (a window costs ~5x less than fresh random numbers, on the hot path of every pair)."""
    return np.random.default_rng([0, size]).integers(-12, 13, (2 * size, 2 * size, 3),
                                                     dtype=np.int16)


def render_image(signature: Sequence[int], rng: np.random.Generator, size: int) -> np.ndarray:
    """HxWx3 uint8 image of a concept: its signature with random pose, colour and noise."""
    if size not in _GRIDS:
        _GRIDS[size] = (*_grid(size), _noise_bank(size))
    xx, yy, noise = _GRIDS[size]
    bg_i, shape, fg_i = (int(v) for v in signature)
    u = rng.random(10).tolist()  # python floats keep the float32 grid float32 (NEP 50)
    cx, cy = 0.5 + (u[0] - 0.5) * 0.3, 0.5 + (u[1] - 0.5) * 0.3
    r = 0.2 + 0.16 * u[2]
    colours = np.empty((3, 3), dtype=np.int16)  # background, foreground, clutter
    jitter = rng.normal(0.0, 14.0, 6)
    colours[0] = PALETTE[bg_i] + jitter[:3]
    colours[1] = PALETTE[fg_i] + jitter[3:]
    labels = _shape_mask(shape, xx - cx, yy - cy, r, u[3] * r).astype(np.uint8)
    if u[4] < CLUTTER_SHARE:  # a small blob of random colour somewhere
        bx, by, br = u[5], u[6], 0.05 + 0.04 * u[7]
        labels[(np.abs(xx - bx) < br) & (np.abs(yy - by) < br)] = 2
        colours[2] = rng.integers(0, 256, 3)
    img = np.take(colours, labels, axis=0)
    ox, oy = int(u[8] * size), int(u[9] * size)
    img += noise[oy:oy + size, ox:ox + size]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """A junk picture: blocky random colours plus noise, no concept signature."""
    cells = int(rng.integers(2, 9))
    coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    rep = math.ceil(size / cells)
    img = np.repeat(np.repeat(coarse, rep, 0), rep, 1)[:size, :size].astype(np.int16)
    img += rng.integers(-30, 31, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
