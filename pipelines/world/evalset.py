"""The held-out eval set: a balanced set from its own seed stream, with class names and
prompt templates in every language, for zero-shot classification and retrieval.

Writes eval/eval.parquet, eval/classnames.json and eval/templates.json (columns in the
package docstring, pipelines/world/__init__.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worldclip.pipelines.world.languages import CAPTION_TEMPLATES
from worldclip.pipelines.world.render import encode_jpeg, render_image
from worldclip.pipelines.world.seeds import STREAM_EVAL, seeded
from worldclip.pipelines.world.spec import WorldSpec
from worldclip.platform import storage


def eval_templates(languages: Sequence[str]) -> dict[str, list[str]]:
    return {lang: list(CAPTION_TEMPLATES[lang]) for lang in languages}


def write_eval(spec: WorldSpec, out_url: str) -> int:
    """eval_per_concept images per concept from their own seed stream, streamed one concept
    (one row group) at a time; returns the number of rows."""
    import pyarrow as pa  # lazily: keeps `import worldclip.pipelines.world` light
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("label", pa.int32()),
                        ("captions", pa.string())])
    rows = 0
    with storage.atomic_writer(storage.join(out_url, "eval", "eval.parquet")) as f:
        writer = pq.ParquetWriter(f, schema)
        for c in spec.concepts:
            rng, r = seeded(spec.seed, STREAM_EVAL, c.index)
            batch: dict[str, list[Any]] = {"key": [], "image": [], "label": [], "captions": []}
            for i in range(spec.eval_per_concept):
                img = render_image(spec.signatures[c.index], rng, spec.image_size)
                captions = {lang: r.choice(CAPTION_TEMPLATES[lang]).format(c.names[lang])
                            for lang in spec.languages}
                batch["key"].append(f"eval_{c.index:04d}_{i:04d}")
                batch["image"].append(encode_jpeg(img))
                batch["label"].append(c.index)
                batch["captions"].append(json.dumps(captions, ensure_ascii=False,
                                                    sort_keys=True))
            if batch["key"]:
                writer.write_table(pa.table(batch, schema=schema))
                rows += len(batch["key"])
        writer.close()
    classnames = {lang: [c.names[lang] for c in spec.concepts] for lang in spec.languages}
    storage.write_json(storage.join(out_url, "eval", "classnames.json"), classnames)
    storage.write_json(storage.join(out_url, "eval", "templates.json"),
                       eval_templates(spec.languages))
    return rows
