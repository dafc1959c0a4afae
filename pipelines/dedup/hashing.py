"""Pure functions of dedup: sha256/phash columns of image bytes, Hamming matching against
eval hashes, exact-duplicate resolution and the counts removed rows had added
(docs/curation.md, "Deduplication and decontamination")."""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

_PAIRWISE_BLOCK = 4_000_000  # pool x eval comparisons held at once (uint64: 32 MB)

_N = 32  # phash: 8x8 low frequencies of the DCT of a 32x32 grey thumbnail (imagehash)
_DCT = 2.0 * np.cos(np.pi * np.outer(np.arange(_N), 2 * np.arange(_N) + 1) / (2 * _N))


def phash64(data: bytes) -> int | None:
    """imagehash.phash (64 bits) of one image as an int; None when it does not decode."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("L", (2 * _N, 2 * _N))  # JPEG: decode at reduced scale
            return int(str(imagehash.phash(im)), 16)
    except Exception:  # noqa: BLE001 -- any undecodable image: no perceptual hash
        return None


def _grey32(data: bytes) -> np.ndarray | None:
    """32x32 grey thumbnail as imagehash.phash builds it (convert L, LANCZOS resize); JPEGs
    are decoded by libjpeg-turbo at reduced scale straight to grey (simplejpeg): the hash
    only sees 32x32, and PIL's open + full decode cost ~5x pass 1's work per pair."""
    from PIL import Image

    arr = None
    if data[:3] == b"\xff\xd8\xff":
        try:
            import simplejpeg

            arr = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=_N,
                                         min_width=_N)[:, :, 0]
        except Exception:  # noqa: BLE001 -- progressive/CMYK/odd JPEGs: PIL below
            arr = None
    try:
        if arr is None:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (2 * _N, 2 * _N))
                g = im.convert("L")
        else:
            if arr.shape == (_N, _N):
                return arr.astype(np.float64)
            g = Image.fromarray(np.ascontiguousarray(arr), "L")
        return np.asarray(g.resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    except Exception:  # noqa: BLE001 -- undecodable: no perceptual hash
        return None


def phash_batch(images: list[bytes | None]) -> list[int | None]:
    """imagehash.phash of many images at once: the thumbnails' 2-D DCT-II as one batched
    matrix product (the same numbers as imagehash's scipy dct on the same thumbnail, tested
    bit for bit), bits = low frequencies above their median, row-major, first bit high."""
    thumbs = [_grey32(b) if b else None for b in images]
    ok = [i for i, t in enumerate(thumbs) if t is not None]
    out: list[int | None] = [None] * len(images)
    if not ok:
        return out
    x = np.stack([thumbs[i] for i in ok])  # [n, 32 (m), 32 (j)]
    # low[k, l] = sum_mj C[k, m] x[m, j] C[l, j] for k, l < 8, as two plain 2-D BLAS
    # products (numpy's stacked matmul with a transposed operand loops in C, ~100x slower)
    c8 = np.ascontiguousarray(_DCT[:8])
    a = (x.reshape(-1, _N) @ c8.T).reshape(len(ok), _N, 8)  # [n, m, l]
    b = (np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(-1, _N) @ c8.T)  # [n*l, k]
    low = b.reshape(len(ok), 8, 8).transpose(0, 2, 1).reshape(len(ok), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    for i, row in zip(ok, np.packbits(bits, axis=1), strict=True):
        out[i] = int.from_bytes(row.tobytes(), "big")
    return out


def hash_table(keys: list[str], images: list[bytes | None], column: str) -> pa.Table:
    """One hash column of a match table: key + sha256 (hex of the image bytes) or phash."""
    if column == "sha256":
        # null image (text-first match index, docs/curation.md): nothing to compare
        values = pa.array([hashlib.sha256(b).hexdigest() if b else None for b in images],
                          pa.string())
    else:
        values = pa.array(phash_batch(images), pa.uint64())
    return pa.table({"key": pa.array(keys, pa.string()), column: values})


def hamming_matches(pool: np.ndarray, evals: np.ndarray, max_distance: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool row, nearest eval row, distance) for every pool hash within max_distance bits of
    some eval hash. Brute force in blocks (np.bitwise_count): eval sets are small (<= ~1e5),
    the pool is split over shards."""
    pool = np.asarray(pool, dtype=np.uint64)
    evals = np.asarray(evals, dtype=np.uint64)
    rows, near, dist = [], [], []
    if len(pool) == 0 or len(evals) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    step = max(1, _PAIRWISE_BLOCK // len(evals))
    for s in range(0, len(pool), step):
        d = np.bitwise_count(pool[s:s + step, None] ^ evals[None, :])
        j = d.argmin(axis=1)
        best = d[np.arange(len(j)), j]
        hit = np.flatnonzero(best <= max_distance)
        rows.append(hit + s)
        near.append(j[hit])
        dist.append(best[hit].astype(np.int64))
    return np.concatenate(rows), np.concatenate(near), np.concatenate(dist)


def exact_duplicates(table: pa.Table) -> pa.Table:
    """Rows (shard, key, sha256) -> the duplicate rows (shard, key, owner): every row of a
    sha256 group but its smallest (shard, key)."""
    if table.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.string()), "key": pa.array([], pa.string()),
                         "owner": pa.array([], pa.string())})
    t = table.sort_by([("sha256", "ascending"), ("shard", "ascending"), ("key", "ascending")])
    sha = t.column("sha256").to_pylist()
    shard = t.column("shard").to_pylist()
    key = t.column("key").to_pylist()
    out_s, out_k, out_o = [], [], []
    owner = ""
    for i, h in enumerate(sha):
        if i and h == sha[i - 1]:
            out_s.append(shard[i])
            out_k.append(key[i])
            out_o.append(owner)
        else:
            owner = f"{shard[i]}/{key[i]}"
    return pa.table({"shard": pa.array(out_s, pa.string()), "key": pa.array(out_k, pa.string()),
                     "owner": pa.array(out_o, pa.string())})


def removed_counts(match: pa.Table, keys: set[str]) -> pa.Table:
    """Sparse counts (lang, entry_id, count) the rows `keys` added in pass 1: +1 per entry id
    per text, exactly as ShardMatcher.match_shard counted them."""
    cnt: dict[str, Counter] = defaultdict(Counter)
    for k, langs, ids in zip(match.column("key").to_pylist(), match.column("langs").to_pylist(),
                             match.column("entry_ids").to_pylist(), strict=True):
        if k in keys:
            for g, e in zip(langs, ids, strict=True):
                cnt[g].update(e)
    c_lang, c_id, c_n = [], [], []
    for g, c in sorted(cnt.items()):
        for e in sorted(c):
            c_lang.append(g)
            c_id.append(e)
            c_n.append(c[e])
    return pa.table({"lang": pa.array(c_lang, pa.string()),
                     "entry_id": pa.array(c_id, pa.int32()),
                     "count": pa.array(c_n, pa.uint64())})
