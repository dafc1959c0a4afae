"""Pure functions of dedup: sha256/phash columns of image bytes, Hamming matching against
eval hashes, exact-duplicate resolution and the counts removed rows had added
(docs/curation.md, "Deduplication and decontamination")."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def _grey32_pil(data: bytes, arr: np.ndarray | None = None) -> np.ndarray | None:
    """32x32 grey thumbnail as imagehash.phash builds it (convert L, LANCZOS resize), from a
    scaled libjpeg-turbo decode `arr` when there is one, else from PIL's own decode."""
    from PIL import Image

    try:
        if arr is None:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (2 * _N, 2 * _N))
                g = im.convert("L")
        else:
            g = Image.fromarray(np.ascontiguousarray(arr), "L")
        return np.asarray(g.resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.uint8)
    except Exception:  # noqa: BLE001 -- undecodable: no perceptual hash
        return None


def _thumbnails(images: list[bytes | None]) -> tuple[list[int], np.ndarray]:
    """(rows that decode, their 32x32 grey thumbnails as one uint8 [n, 32, 32] array).

    JPEGs are decoded by libjpeg-turbo at reduced scale straight to grey (simplejpeg's
    DCT scaling): the hash only sees 32x32, and PIL's open + full decode cost ~5x pass 1's
    work per pair. The decode is the whole per-image cost (a 2 KB JPEG: ~17 us, most of it
    entropy decoding, the same at 1/2 or 1/8 scale), so the loop does nothing else: a decode
    that lands on 32x32 (a 256-pixel image at 1/8, a 64-pixel one at 1/2) is the thumbnail
    itself; other sizes, progressive/CMYK/odd JPEGs and other formats go through PIL."""
    import simplejpeg

    decode = simplejpeg.decode_jpeg
    ok: list[int] = []
    thumbs: list[np.ndarray] = []
    for i, data in enumerate(images):
        if not data:
            continue
        arr = None
        if data[:3] == b"\xff\xd8\xff":
            try:
                arr = decode(data, colorspace="GRAY", min_height=_N, min_width=_N)
            except Exception:  # noqa: BLE001 -- progressive/CMYK/odd JPEGs: PIL below
                arr = None
        if arr is not None and arr.shape[0] == _N and arr.shape[1] == _N:
            thumbs.append(arr[:, :, 0])
        else:
            t = _grey32_pil(data, None if arr is None else arr[:, :, 0])
            if t is None:
                continue
            thumbs.append(t)
        ok.append(i)
    if not thumbs:
        return ok, np.zeros((0, _N, _N), dtype=np.uint8)
    return ok, np.stack(thumbs)


def phash_column(images: list[bytes | None]) -> pa.Array:
    """imagehash.phash of many images at once, as a uint64 Arrow array (null: no image, or it
    does not decode): the thumbnails' 2-D DCT-II as one batched matrix product (the same
    numbers as imagehash's scipy dct on the same thumbnail, tested bit for bit), bits = low
    frequencies above their median, row-major, first bit high."""
    ok, thumbs = _thumbnails(images)
    values = np.zeros(len(images), dtype=np.uint64)
    valid = np.zeros(len(images), dtype=bool)
    if ok:
        valid[ok] = True
        values[ok] = _phash_rows(thumbs)
    return pa.array(values, pa.uint64(), mask=~valid)


def phash_batch(images: list[bytes | None]) -> list[int | None]:
    """phash_column as Python ints (None: no hash)."""
    return phash_column(images).to_pylist()


_ROWS_CHUNK = 256  # thumbnails per DCT product: 2 MB of float64, in cache (~1.8x faster)


def _phash_rows(thumbs: np.ndarray) -> np.ndarray:
    """[n, 32, 32] uint8 thumbnails -> [n] uint64 phashes."""
    out = np.empty(len(thumbs), dtype=np.uint64)
    c8t = np.ascontiguousarray(_DCT[:8].T)
    for s in range(0, len(thumbs), _ROWS_CHUNK):
        x = thumbs[s: s + _ROWS_CHUNK].astype(np.float64)  # [n, 32 (m), 32 (j)]
        n = len(x)
        # low[k, l] = sum_mj C[k, m] x[m, j] C[l, j] for k, l < 8, as two plain 2-D BLAS
        # products (numpy's stacked matmul with a transposed operand loops in C, ~100x
        # slower)
        a = (x.reshape(-1, _N) @ c8t).reshape(n, _N, 8)  # [n, m, l]
        b = np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(-1, _N) @ c8t  # [n*l, k]
        low = b.reshape(n, 8, 8).transpose(0, 2, 1).reshape(n, 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[s: s + n] = np.packbits(bits, axis=1).view(">u8").ravel()  # first bit high
    return out


def hash_table(keys: list[str], images: list[bytes | None], column: str) -> pa.Table:
    """One hash column of a match table: key + sha256 (hex of the image bytes) or phash."""
    if column == "sha256":
        # null image (text-first match index, docs/curation.md): nothing to compare
        values = pa.array([hashlib.sha256(b).hexdigest() if b else None for b in images],
                          pa.string())
    else:
        values = phash_column(images)
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
    """Rows (shard, key, sha256[, name]) -> the duplicate rows (shard, key, owner): every row
    of a sha256 group but its first by (name, key, shard), owner = "<shard>/<key>" of that
    first. `name` is a location-free name of the shard (its path below the inputs' common
    folder, layout.relative_names), so the kept copy is the same wherever the pool lives;
    without it, (shard id, key) orders.
    Vectorized (Arrow sort, group starts by comparing neighbours): a reducer takes a million
    rows."""
    if table.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.string()), "key": pa.array([], pa.string()),
                         "owner": pa.array([], pa.string())})
    name = "name" if "name" in table.column_names else "shard"
    t = table.sort_by([("sha256", "ascending"), (name, "ascending"), ("key", "ascending"),
                       ("shard", "ascending")])
    sha = t.column("sha256").combine_chunks()
    start = np.ones(t.num_rows, dtype=bool)
    if t.num_rows > 1:
        start[1:] = pc.not_equal(sha.slice(1), sha.slice(0, t.num_rows - 1)).to_numpy(
            zero_copy_only=False)
    first = np.maximum.accumulate(np.where(start, np.arange(t.num_rows), 0))
    dup = np.flatnonzero(~start)
    owner_rows = pa.array(first[dup])
    owner = pc.binary_join_element_wise(t.column("shard").take(owner_rows),
                                        t.column("key").take(owner_rows), "/")
    rows = pa.array(dup)
    return pa.table({"shard": t.column("shard").take(rows), "key": t.column("key").take(rows),
                     "owner": owner})


def removed_counts(match: pa.Table, keys: set[str]) -> pa.Table:
    """Sparse counts (lang, entry_id, count) the rows `keys` added in pass 1: +1 per entry id
    per text, exactly as ShardMatcher.match_shard counted them. Vectorized: the removed rows
    are filtered first, their (lang, entry id) pairs flattened and counted by group_by."""
    m = match.filter(pc.is_in(match.column("key"), pa.array(sorted(keys), pa.string())))
    langs = pc.list_flatten(m.column("langs"))  # one per text
    ids = pc.list_flatten(m.column("entry_ids"))  # list<int32> per text
    per_id_text = pc.list_parent_indices(ids)  # text of every entry id
    flat = pa.table({"lang": langs.take(per_id_text),
                     "entry_id": pc.list_flatten(ids).cast(pa.int32())})
    c = flat.group_by(["lang", "entry_id"]).aggregate([("entry_id", "count")])
    c = c.sort_by([("lang", "ascending"), ("entry_id", "ascending")])
    return pa.table({"lang": c.column("lang").cast(pa.string()),
                     "entry_id": c.column("entry_id").cast(pa.int32()),
                     "count": c.column("entry_id_count").cast(pa.uint64())})
