"""The world's files: the raw shards in each format, their counts, and the metadata lists.

Writes raw/wds/shard-NNNNN.tar (through the one tar writer, pipelines/wds.py),
raw/parquet/shard-NNNNN.parquet, metadata/{lang}.json and metadata/manifest.json; what each
holds is in the package docstring (pipelines/world/__init__.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from worldclip.pipelines import wds
from worldclip.pipelines.world.records import generate_shard, ground_truth
from worldclip.pipelines.world.spec import WorldSpec
from worldclip.platform import storage


def write_tar(records: Sequence[dict[str, Any]], url: str) -> None:
    """A WebDataset shard: {key}.jpg and {key}.json per record, through the one tar writer
    (pipelines/wds.py). Always .jpg: the world's corrupt records hold non-image bytes on
    purpose, under the name a crawler would have given them."""
    wds.write_tar(url, ((rec["key"], (
        ("jpg", rec["image"]),
        ("json", json.dumps(ground_truth(rec), ensure_ascii=False, sort_keys=True).encode()),
    )) for rec in records))


def _pa():  # pyarrow imported lazily: keeps `import worldclip.pipelines.world` light
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def parquet_schema() -> Any:
    pa, _ = _pa()
    return pa.schema([("key", pa.string()), ("image", pa.binary()),
                      ("texts", pa.list_(pa.string())), ("lang", pa.string()),
                      ("concept", pa.int32()), ("corrupt", pa.bool_())])


def write_parquet(records: Sequence[dict[str, Any]], url: str) -> None:
    pa, pq = _pa()
    schema = parquet_schema()
    table = pa.table({name: [rec[name] for rec in records] for name in schema.names},
                     schema=schema)
    with storage.atomic_writer(url) as f:
        pq.write_table(table, f)


def empty_stats(spec: WorldSpec) -> dict[str, Any]:
    """Counts of no shard: what write_shard returns and world.json sums (pipelines/world/
    stage.py), in-process or from Ray tasks."""
    return {"pairs": 0, "junk": 0, "corrupt": 0, "texts": 0, "by_language": Counter(),
            "by_concept": [0] * len(spec.concepts)}


def merge_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one shard's (or one task's) counts into total, in place."""
    for k in ("pairs", "junk", "corrupt", "texts"):
        total[k] += part[k]
    total["by_language"].update(part["by_language"])
    total["by_concept"] = [a + b for a, b in zip(total["by_concept"], part["by_concept"])]


def write_shard(spec: WorldSpec, shard: int, out_url: str, formats: Sequence[str]
                ) -> dict[str, Any]:
    """Generate one shard, write it in each format, return its counts."""
    records = generate_shard(spec, shard)
    if "wds" in formats:
        write_tar(records, storage.join(out_url, "raw", "wds", f"shard-{shard:05d}.tar"))
    if "parquet" in formats:
        write_parquet(records, storage.join(out_url, "raw", "parquet",
                                            f"shard-{shard:05d}.parquet"))
    stats = empty_stats(spec)
    for rec in records:
        stats["pairs"] += 1
        stats["texts"] += len(rec["texts"])
        stats["junk"] += rec["concept"] < 0
        stats["corrupt"] += rec["corrupt"]
        stats["by_language"][rec["lang"]] += 1
        if rec["concept"] >= 0:
            stats["by_concept"][rec["concept"]] += 1
    return stats


def write_metadata(spec: WorldSpec, out_url: str) -> dict[str, Any]:
    files: dict[str, str] = {}
    for lang in spec.languages:
        data = json.dumps(spec.metadata[lang], ensure_ascii=False, indent=0).encode("utf-8")
        storage.write_bytes(storage.join(out_url, "metadata", f"{lang}.json"), data)
        files[f"{lang}.json"] = hashlib.sha256(data).hexdigest()
    manifest = {"languages": spec.languages,
                "entries": {lang: len(spec.metadata[lang]) for lang in spec.languages},
                "concept_entries": len(spec.concepts),
                "sha256": files}
    storage.write_json(storage.join(out_url, "metadata", "manifest.json"), manifest)
    return manifest
