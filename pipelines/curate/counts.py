"""Global counts: the distributed sum of the per-shard sparse counts, over exactly the shards
a run covers (docs/curation.md §3), and their storage."""

from __future__ import annotations

import hashlib
import io

import numpy as np

from worldclip.pipelines.arrowio import read_parquet
from worldclip.platform import storage
from worldclip.platform.execution import chunked, run_tasks


def sum_count_files(urls: list[str], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Dense uint64 per-language counts from sparse per-shard count files."""
    total = {g: np.zeros(n, dtype=np.uint64) for g, n in sizes.items()}
    for u in urls:
        t = read_parquet(u)
        if t.num_rows == 0:
            continue
        langs = t.column("lang").to_numpy(zero_copy_only=False)
        ids = t.column("entry_id").to_numpy()
        n = t.column("count").to_numpy().astype(np.uint64)
        for g in np.unique(langs):
            m = langs == g
            np.add.at(total[str(g)], ids[m], n[m])
    return total


def aggregate_counts(count_urls: list[str], sizes: dict[str, int],
                     files_per_task: int = 16) -> dict[str, np.ndarray]:
    """Sum sparse shard counts: Ray tasks reduce chunks of files, the driver adds the parts."""
    total = {g: np.zeros(n, dtype=np.uint64) for g, n in sizes.items()}
    for part in run_tasks(sum_count_files, chunked(count_urls, files_per_task), sizes,
                          num_cpus=0.5):
        for g, arr in part.items():
            total[g] += arr
    return total


def save_counts(url: str, counts: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **counts)
    storage.write_bytes(url, buf.getvalue())


def load_counts(url: str) -> dict[str, np.ndarray]:
    if not storage.exists(url):
        raise FileNotFoundError(f"{url}: no global counts; run `worldclip curate` first "
                                "(rebalance reuses its matches and counts)")
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
        return {k: z[k].astype(np.uint64) for k in z.files}


def counts_digest(counts: dict[str, np.ndarray]) -> str:
    """A short hash of the counts (language names, sizes and values): balancing artifacts
    and data-card versions are keyed by it."""
    h = hashlib.sha256()
    for g in sorted(counts):
        h.update(g.encode() + b"\0" + np.ascontiguousarray(counts[g], np.uint64).tobytes())
    return h.hexdigest()[:16]
