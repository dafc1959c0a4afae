"""WebDataset tars as the ecosystem reads them: one writer for every tar worldclip produces.

Both the embedded world's raw shards (pipelines/world.py) and the offline curated shards
(pipelines/curate.py) go through `write_tar`, so member naming, determinism (mtime 0, mode
0644, members in the order given) and the safety check on member names live in one place.

Curated shards follow img2dataset's layout so open_clip, webdataset and img2dataset users read
them without glue (docs/curation.md, "Input formats and text fields"): `KEY.<ext>` with the
extension of the real image format (sniffed from the bytes, never assumed "jpg"), `KEY.txt`
with the caption, `KEY.json` with the rest.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator, Sequence

from worldclip.platform import storage

# A sample: its key and its members as (extension, payload) in the order they are written.
Sample = tuple[str, Sequence[tuple[str, bytes]]]

TAR_HEADER_BYTES = 512  # a ustar header block; every member also pads its data to 512


def image_ext(data: bytes | None) -> str | None:
    """The file extension of the image format the bytes hold, or None when they are no image
    this project reads (magic bytes only; full decoding and bomb limits happen at ingest)."""
    if not data:
        return None
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"GIF8"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"tar member name {name!r}: must be relative without '..'")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical output for the same input: a resumed run equals a clean one
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_tar(url: str, samples: Iterable[Sample]) -> int:
    """Write samples as one WebDataset tar (streamed, committed atomically); -> samples written.

    PAX format: the same bytes as ustar for short ASCII names, and still valid for keys over
    100 characters or outside ASCII.
    """
    n = 0
    with storage.atomic_writer(url) as f, tarfile.open(fileobj=f, mode="w|",
                                                       format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for ext, payload in members:
                _member(tar, f"{key}.{ext}", payload)
            n += 1
    return n


def sample_bytes(members: Sequence[tuple[str, bytes]]) -> int:
    """Bytes a sample takes in a tar: a header per member plus its data padded to 512."""
    return sum(TAR_HEADER_BYTES + -(-len(p) // 512) * 512 for _, p in members)


def split_shards(samples: Sequence[Sample], max_samples: int, max_bytes: int
                 ) -> Iterator[list[Sample]]:
    """Consecutive groups of samples, each within max_samples and max_bytes (0 = no limit).
    A single sample over max_bytes gets a group of its own. Never yields an empty group."""
    group: list[Sample] = []
    size = 0
    for s in samples:
        b = sample_bytes(s[1])
        if group and ((max_samples and len(group) >= max_samples)
                      or (max_bytes and size + b > max_bytes)):
            yield group
            group, size = [], 0
        group.append(s)
        size += b
    if group:
        yield group
