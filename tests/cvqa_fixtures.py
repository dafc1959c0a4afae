"""A small CVQA fixture in the layout the Hugging Face Hub ships afaji/cvqa: data/test-*.parquet
with the dataset card's columns and types (the `image` column a struct {bytes, path}, as the
`datasets` Image feature writes it, and the features JSON in the schema's "huggingface" key).
Source checked: https://huggingface.co/datasets/afaji/cvqa (README.md, dataset_info)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("ID", pa.string()), ("Subset", pa.string()), ("Question", pa.string()),
    ("Translated Question", pa.string()), ("Options", pa.list_(pa.string())),
    ("Translated Options", pa.list_(pa.string())), ("Label", pa.int64()),
    ("Category", pa.string()), ("Image Type", pa.string()), ("Image Source", pa.string()),
    ("License", pa.string()),
])
_FEATURES = {"image": {"_type": "Image"}, "Label": {"dtype": "int64", "_type": "Value"},
             **{c: {"dtype": "string", "_type": "Value"} for c in
                ("ID", "Subset", "Question", "Translated Question", "Category", "Image Type",
                 "Image Source", "License")},
             **{c: {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}
                for c in ("Options", "Translated Options")}}


def cvqa_row(image: bytes | None, qid: str, language: str, country: str, question: str,
             options: Sequence[str], label: int, translated_question: str = "",
             translated_options: Sequence[str] | None = None) -> dict[str, Any]:
    """One question as the Hub stores it; Subset is the repr of a (language, country) tuple."""
    return {"image": None if image is None else {"bytes": image, "path": f"{qid}.jpg"},
            "ID": qid, "Subset": repr((language, country)), "Question": question,
            "Translated Question": translated_question or question, "Options": list(options),
            "Translated Options": list(translated_options or options), "Label": label,
            "Category": "Objects / materials / clothing", "Image Type": "Self",
            "Image Source": "Self-open", "License": "CC BY-SA"}


def write_cvqa(root: str, rows: Sequence[dict[str, Any]], files: int = 1) -> list[str]:
    """root/data/test-0000i-of-0000n.parquet, rows split over `files` files."""
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    meta = {b"huggingface": json.dumps({"info": {"features": _FEATURES}}).encode()}
    out = []
    per = -(-len(rows) // files)
    for i in range(files):
        path = os.path.join(root, "data", f"test-{i:05d}-of-{files:05d}.parquet")
        table = pa.Table.from_pylist(list(rows[i * per:(i + 1) * per]), schema=SCHEMA)
        pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=3)
        out.append(path)
    return out
