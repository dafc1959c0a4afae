"""What curate calls: pass 1 writes the hash columns beside each match file; the counts
subtract what removed rows added; pass 2 drops the removed rows with their reason; the data
card shows the dedup state."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig

from worldclip.pipelines import layout, refs
from worldclip.pipelines.arrowio import parquet_bytes, read_parquet
from worldclip.pipelines.dedup.hashing import hash_table
from worldclip.platform import storage


def hash_columns(c: DictConfig) -> tuple[str, ...]:
    """The hash columns pass 1 writes beside each match file, from curation config."""
    return (("sha256",) if c.get("dedup") else ()) + \
        (("phash",) if c.get("decontaminate") else ())


def write_hash_columns(base: str, keys: list[str], images: list[bytes | None],
                       columns: tuple[str, ...]) -> None:
    """Pass 1 hook (curate.match_to_files): <base>.<column>.parquet for each column, from the
    image bytes already in memory -- no second read of the shard, no second actor pool."""
    for column in columns:
        storage.write_bytes(f"{base}.{column}.parquet",
                            parquet_bytes(hash_table(keys, images, column)))


def hash_url(out: str, name: str, column: str) -> str:
    """<out>/matches/<shard>.<sha256|phash>.parquet: a hash column of the match index."""
    return storage.join(layout.matches_dir(out), f"{name}.{column}.parquet")


def matched_images(out: str, sid: str, keys: set[str] | None = None
                   ) -> tuple[list[str], list[bytes | None]]:
    """(keys, image bytes) of a shard's matched pairs -- or of those among `keys` only --
    read by reference from the raw shard (pipelines/refs.py): the match index holds no image
    bytes."""
    st = storage.read_json(layout.stats_file(out, sid))
    m = read_parquet(layout.match_file(out, sid))
    if keys is not None:
        m = m.filter(pc.is_in(m.column("key"), value_set=pa.array(sorted(keys), pa.string())))
    return (m.column("key").to_pylist(),
            refs.read_images(st["shard"], st["kind"], m, st.get("identity"),
                             st.get("image_column", "")))



def subtract_removed(out: str, counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """counts minus what every removed row contributed (in place; returned for chaining)."""
    from worldclip.pipelines.curate.counts import sum_count_files

    urls = storage.glob(storage.join(out, "dedup", "removed", "*.counts.parquet"))
    if not urls:
        return counts
    minus = sum_count_files(urls, {g: len(v) for g, v in counts.items()})
    for g, m in minus.items():
        if (m > counts[g]).any():
            raise RuntimeError(f"dedup: removed rows of language {g} exceed its counts; "
                               f"remove {out}/dedup and run `worldclip curate` again")
        counts[g] -= m
    return counts


def apply_removed(table: pa.Table, out: str, name: str) -> tuple[pa.Table, dict[str, int]]:
    """Pass 2 hook: the match table without its removed rows, and the drops by reason."""
    url = storage.join(out, "dedup", "removed", f"{name}.parquet")
    if not storage.exists(url):
        return table, {}
    rem = read_parquet(url)
    reason = dict(zip(rem.column("key").to_pylist(), rem.column("reason").to_pylist(),
                      strict=True))
    keys = table.column("key").to_pylist()
    keep = np.array([k not in reason for k in keys], dtype=bool)
    drops = Counter(reason[k] for k in keys if k in reason)
    return table.filter(pa.array(keep)), dict(drops)


def state(out: str) -> dict[str, Any]:
    url = storage.join(out, "dedup", "state.json")
    return storage.read_json(url) if storage.exists(url) else {}


def datacard_section(out: str, balanced_out: str) -> dict[str, Any]:
    """The data card's "dedup" entry; copies the thumbnail grid into the balanced output."""
    st = state(out)
    if not st:
        return {"enabled": False}
    grid = storage.join(out, "dedup", "eval_duplicates.png")
    if st.get("examples") and storage.exists(grid):
        dest = storage.join(balanced_out, "plots", "eval_duplicates.png")
        storage.write_bytes(dest, storage.read_bytes(grid))
        st = {**st, "examples_png": dest}
    return {"enabled": True, **st}
