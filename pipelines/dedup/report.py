"""The thumbnail grid of eval duplicates the data card links (pool image | eval image)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from worldclip.pipelines.dedup.hooks import matched_images


def thumbnail_grid(out: str, examples: list[dict[str, Any]],
                   samples: Mapping[str, Mapping[str, bytes]], size: int = 96,
                   inputs: str = "") -> bytes:
    """PNG: one row per example, pool image | eval image, with the distance; `inputs` (a
    digest of what it shows) is kept in its text (pipelines/report.py `is_current`)."""
    from PIL import Image, ImageDraw

    from worldclip.pipelines.report import png_info

    grid = Image.new("RGB", (2 * size + 250, len(examples) * (size + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    wanted: dict[str, set[str]] = {}
    for ex in examples:
        wanted.setdefault(ex["shard"], set()).add(ex["key"])
    # only the examples' images, by reference: not every matched image of their shards
    cache = {sid: dict(zip(*matched_images(out, sid, keys), strict=True))
             for sid, keys in wanted.items()}
    for i, ex in enumerate(examples):
        y = 4 + i * (size + 4)
        for j, data in enumerate((cache[ex["shard"]].get(ex["key"]),
                                  samples.get(ex["eval_set"], {}).get(ex["eval_key"]))):
            try:
                with Image.open(io.BytesIO(data or b"")) as im:
                    grid.paste(im.convert("RGB").resize((size, size)), (4 + j * (size + 4), y))
            except Exception:  # noqa: BLE001 -- an undecodable example leaves its cell blank
                pass
        for line, text in enumerate((f"pool {ex['shard']}/{ex['key']}"[:40],
                                     f"eval {ex['eval_set']}/{ex['eval_key']}"[:40],
                                     f"Hamming distance {ex['distance']}")):
            draw.text((2 * size + 16, y + size // 2 - 18 + 12 * line), text, fill="black")
    buf = io.BytesIO()
    grid.save(buf, format="PNG", pnginfo=png_info(inputs))
    return buf.getvalue()
