"""Bad-input corpus: shards and metadata that real crawls produce, with expected accounting.

Every generator builds one shard's bytes in memory and states what curation must make of it:
how many pairs the file holds, how many the parser can see (pairs_in), the pass-1 drops by
reason, how many pairs reach balancing ("matched": kept or sampled_out later), and a substring
the shard's error report must contain. `write_corpus(url)` writes them all under any storage
URL (local folder or s3://) and returns the expectations; `expected_totals` sums them.

Captions meant to reach balancing are English and contain MATCH_WORD ("photo"), a head word
the embedded world puts in every language's metadata; captions meant to be dropped for their
language are in scripts no metadata covers (Georgian, Amharic, Tamil). The decompression bomb
passes curation on purpose: curation checks magic bytes only; decoding at training ingest
rejects it (see `bomb_png`).
"""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from worldclip.pipelines.shards import shard_name
from worldclip.platform import storage

MATCH_WORD = "photo"
CAPTION = "a photo of the sunset at the beach"  # English, matches MATCH_WORD (and "the", "a")
NO_METADATA_CAPTIONS = {
    "ka": "ძაღლი პარკში თამაშობს მზიან დღეს",  # Georgian
    "am": "ውሻው በፓርኩ ውስጥ በፀሓያማ ቀን ይጫወታል",  # Amharic
    "ta": "நாய் வெயில் நாளில் பூங்காவில் விளையாடுகிறது",  # Tamil
}
PASS1_REASONS = ("corrupt_record", "no_text", "unknown_language", "no_match")


@dataclass
class BadShard:
    """One bad-input file and what curation must report for it."""

    name: str  # file name in the input folder
    kind: str  # what is wrong, for the report table
    data: bytes
    pairs_written: int  # pairs the generator put in (including damaged / unreachable ones)
    pairs_in: int  # pairs the parser can see: matched + sum(drops)
    drops: dict[str, int] = field(default_factory=dict)  # pass-1 drops by reason
    matched: int = 0  # pairs that reach balancing (kept, sampled_out or no_threshold)
    error: str | None = None  # substring of the shard's error report; None: no error
    note: str = ""

    def __post_init__(self) -> None:
        assert self.pairs_in == self.matched + sum(self.drops.values()), self.name


# ---------------------------------------------------------------- building blocks

def jpeg(seed: int = 0, size: int = 8) -> bytes:
    """A real (tiny) JPEG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height RGB pixels (30 GB decoded) in ~70 bytes.

    Magic bytes say "image", so curation keeps it; Pillow refuses it at open
    (DecompressionBombError: over 2 x Image.MAX_IMAGE_PIXELS), which training ingest relies on.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def tar_bytes(members: Iterable[tuple[str, bytes] | tuple[tarfile.TarInfo, bytes | None]],
              gz: bool = False) -> bytes:
    """A tar from (name, data) pairs; a TarInfo as name is written as given (links, raw
    names such as "/etc/x" or "../x" set on TarInfo.name directly, which tarfile allows)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pair(key: str, caption: str = CAPTION, image: bytes | None = None, seed: int = 0
         ) -> list[tuple[str, bytes]]:
    """A good WebDataset pair: key.jpg + key.json {"texts": [caption]}."""
    meta = json.dumps({"texts": [caption]}, ensure_ascii=False).encode("utf-8")
    return [(f"{key}.jpg", image if image is not None else jpeg(seed)), (f"{key}.json", meta)]


def member_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member of a valid tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return [(m.name, m.offset, m.offset_data) for m in t.getmembers()]


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# ---------------------------------------------------------------- WebDataset tars

def truncated_tar() -> BadShard:
    good = [m for i in range(4) for m in pair(f"trunc{i}", seed=i)]
    data = tar_bytes(good)
    _, _, third_image = member_offsets(data)[4]  # trunc2.jpg
    return BadShard("bad-truncated.tar", "tar cut inside a member's data", data[:third_image + 100],
                    pairs_written=4, pairs_in=3, drops={"corrupt_record": 1}, matched=2,
                    error="unexpected end of data",
                    note="trunc0-1 kept; trunc2 (cut) corrupt; trunc3 unreachable")


def truncated_at_header_tar() -> BadShard:
    """Cut exactly between members: tarfile alone ends silently here (no error, pairs lost)."""
    data = tar_bytes([m for i in range(4) for m in pair(f"cut{i}", seed=i)])
    _, third_header, _ = member_offsets(data)[4]  # cut2.jpg header
    return BadShard("bad-truncated-header.tar", "tar cut at a member boundary",
                    data[:third_header], pairs_written=4, pairs_in=2,
                    drops={"corrupt_record": 1}, matched=1, error="end-of-archive",
                    note="no end-of-archive marker: last group (cut1) may be incomplete")


def corrupt_middle_tar() -> BadShard:
    """Random bytes over one member header in the middle (tarfile alone stops silently)."""
    data = bytearray(tar_bytes([m for i in range(4) for m in pair(f"mid{i}", seed=i)]))
    _, header, _ = member_offsets(bytes(data))[4]
    data[header:header + 512] = random.Random(1).randbytes(512)
    return BadShard("bad-corrupt-middle.tar", "random bytes over a header mid-tar", bytes(data),
                    pairs_written=4, pairs_in=2, drops={"corrupt_record": 1}, matched=1,
                    error="no valid tar header", note="mid0 kept; mid1 suspect; mid2-3 lost")


def random_bytes_tar() -> BadShard:
    r = random.Random(7)
    data = b"NOTATAR" + r.randbytes(4096)
    return BadShard("bad-random.tar", "random bytes named .tar", data, pairs_written=0,
                    pairs_in=0, error="corrupt or truncated tar",
                    note="unreadable: nothing to count; the error names the file")


def empty_tar_file() -> BadShard:
    return BadShard("bad-empty-file.tar", "0-byte .tar", b"", pairs_written=0, pairs_in=0,
                    error="corrupt or truncated tar")


def truncated_gz_tar() -> BadShard:
    """gzip stream cut short (EOFError inside tarfile)."""
    members = [m for i in range(3) for m in pair(f"gz{i}", seed=i)]
    data = tar_bytes(members, gz=True)
    return BadShard("bad-truncated-gz.tar.gz", "gzip tar cut at 90%", data[: int(len(data) * 0.9)],
                    pairs_written=3, pairs_in=3, drops={"corrupt_record": 1}, matched=2,
                    error="corrupt or truncated tar",
                    note="the end of a gzip stream is lost: the last group is suspect")


def corrupt_xz_tar() -> BadShard:
    """An xz-compressed tar (named .tar: tarfile detects compression) with one byte flipped
    mid-stream: lzma raises LZMAError, which is no OSError, while members are being read."""
    r = random.Random(3)
    members = [m for i in range(4) for m in pair(f"xz{i}", image=jpeg(i) + r.randbytes(20_000))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as t:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(payload), 0
            t.addfile(info, io.BytesIO(payload))
    data = bytearray(buf.getvalue())
    data[len(data) * 6 // 10] ^= 0xFF
    return BadShard("bad-corrupt-xz.tar", "xz tar with a flipped byte mid-stream", bytes(data),
                    pairs_written=4, pairs_in=3, drops={"corrupt_record": 1}, matched=2,
                    error="Corrupt input data", note="xz2 is being read at the damage: corrupt")


def concatenated_tar() -> BadShard:
    """Two tars concatenated (`cat a.tar b.tar`): tarfile stops at the first end marker."""
    data = tar_bytes(pair("cat0")) + tar_bytes(pair("cat1"))
    return BadShard("bad-concatenated.tar", "two tars concatenated", data, pairs_written=2,
                    pairs_in=1, matched=1, error="data after the end-of-archive marker",
                    note="the second archive is reported, not read")


def absolute_path_tar() -> BadShard:
    members: list[Any] = []
    for key in ("/etc/abs0", "/tmp/worldclip-evil/abs1"):
        members += pair(key)
    members += pair("ok_abs")
    return BadShard("bad-absolute-paths.tar", "members with absolute paths", tar_bytes(members),
                    pairs_written=3, pairs_in=3, drops={"corrupt_record": 2}, matched=1,
                    error="unsafe path", note="rejected, never extracted")


def dotdot_path_tar() -> BadShard:
    members: list[Any] = []
    for key in ("../dotdot0", "a/../../dotdot1", "x/../../../../tmp/dotdot2"):
        members += pair(key)
    members += pair("sub/ok_dotdot")
    return BadShard("bad-dotdot-paths.tar", "members with '..' paths", tar_bytes(members),
                    pairs_written=4, pairs_in=4, drops={"corrupt_record": 3}, matched=1,
                    error="unsafe path", note="rejected, never extracted")


def links_tar() -> BadShard:
    """Symlink / hardlink members standing in for images: not regular files, never read."""
    sym = tarfile.TarInfo("link0.jpg")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("link1.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
    members: list[Any] = [(sym, None), pair("link0")[1], (hard, None), pair("link1")[1],
                          *pair("ok_link")]
    return BadShard("bad-links.tar", "symlink/hardlink members as images", tar_bytes(members),
                    pairs_written=3, pairs_in=3, drops={"corrupt_record": 2}, matched=1,
                    note="links are skipped: their pairs have no image")


def not_image_tar() -> BadShard:
    members = [*pair("notimg0", image=b"this is not an image at all"),
               *pair("notimg1", image=b"<html><body>404 Not Found</body></html>"),
               *pair("notimg2", image=b"\x00" * 64)]
    return BadShard("bad-not-image.tar", "image bytes that are not images", tar_bytes(members),
                    pairs_written=3, pairs_in=3, drops={"corrupt_record": 3})


def bomb_tar() -> BadShard:
    return BadShard("bad-bomb.tar", "decompression-bomb PNG (100000x100000)",
                    tar_bytes([("bomb0.png", bomb_png()), pair("bomb0")[1]]),
                    pairs_written=1, pairs_in=1, matched=1,
                    note="passes curation (magic bytes only); training ingest rejects it")


def non_utf8_tar() -> BadShard:
    latin1 = "café à la plage".encode("latin-1")
    members = [
        ("nu0.jpg", jpeg(0)), ("nu0.txt", latin1),  # .txt not UTF-8 -> no usable text
        ("nu1.jpg", jpeg(1)), ("nu1.json", b'{"texts": ["caf\xe9 photo"]}'),  # json not UTF-8
        # valid JSON, but a lone surrogate escape: not encodable as UTF-8
        ("nu2.jpg", jpeg(2)), ("nu2.json", b'{"texts": ["\\udcff"]}'),
        ("nu3.jpg", jpeg(3)),
        ("nu3.json", b'{"texts": ["\\ud800 photo", "a photo of a cat"], "src": "x\\udcffy"}'),
    ]
    return BadShard("bad-non-utf8.tar", "captions not UTF-8 (.txt, json, surrogates)",
                    tar_bytes(members), pairs_written=4, pairs_in=4,
                    drops={"no_text": 2, "corrupt_record": 1}, matched=1,
                    note="nu0/nu2 no_text, nu1 corrupt json, nu3 keeps its valid caption")


def empty_captions_tar() -> BadShard:
    members = [
        ("e0.jpg", jpeg(0)), ("e0.txt", b""),
        ("e1.jpg", jpeg(1)), ("e1.txt", b"  \n\t \r\n "),
        ("e2.jpg", jpeg(2)), ("e2.json", b'{"texts": []}'),
        ("e3.jpg", jpeg(3)), ("e3.json", b'{"texts": ["", "   ", "\\n\\t"]}'),
        ("e4.jpg", jpeg(4)), ("e4.json", b'{"texts": [null, 5, {"x": 1}]}'),
        ("e5.jpg", jpeg(5)), ("e5.json", b'{"caption": "\\u3000\\u00a0 "}'),
    ]
    return BadShard("bad-empty-captions.tar", "empty / whitespace-only / non-string captions",
                    tar_bytes(members), pairs_written=6, pairs_in=6, drops={"no_text": 6})


def bad_json_tar() -> BadShard:
    members = [
        ("j0.jpg", jpeg(0)), ("j0.json", b'["a photo", "not an object"]'),
        ("j1.jpg", jpeg(1)), ("j1.json", b'{"texts": ["a photo"'),  # cut JSON
        ("j2.jpg", jpeg(2)), ("j2.json", b"[" * 100_000 + b"]" * 100_000),  # recursion bomb
        ("j3.jpg", jpeg(3)), ("j3.json", b'{"url": "http://x"}'),  # no text field at all
        ("j4.jpg", jpeg(4)),  # image only
        ("j5.json", b'{"texts": ["a photo"]}'),  # text only
    ]
    return BadShard("bad-json.tar", "json not an object / cut / nested 100k deep / no text",
                    tar_bytes(members), pairs_written=6, pairs_in=6,
                    drops={"corrupt_record": 4, "no_text": 2},
                    note="j3 (no text field) and j4 (image only) are no_text, like an "
                         "img2dataset download without --caption_col; j5 has no image")


def long_caption_tar() -> BadShard:
    long = (CAPTION + ". ") * (100_000 // (len(CAPTION) + 2) + 1)
    assert len(long.encode()) >= 100_000
    return BadShard("bad-long-caption.tar", "100 KB caption",
                    tar_bytes(pair("long0", caption=long)), pairs_written=1, pairs_in=1,
                    matched=1, note="cut to MAX_TEXT_CHARS for LID and matching")


def no_metadata_scripts_tar() -> BadShard:
    members = [m for i, (lang, cap) in enumerate(NO_METADATA_CAPTIONS.items())
               for m in pair(f"script_{lang}", caption=cap, seed=i)]
    return BadShard("bad-scripts.tar", "captions in ka/am/ta (no metadata)",
                    tar_bytes(members), pairs_written=3, pairs_in=3,
                    drops={"unknown_language": 3})


def keys_tar() -> BadShard:
    """json "key" values that would be unsafe output member names, and a repeated key."""
    def with_key(member_key: str, key: Any) -> list[tuple[str, bytes]]:
        meta = json.dumps({"key": key, "texts": [CAPTION]}).encode()
        return [(f"{member_key}.jpg", jpeg(1)), (f"{member_key}.json", meta)]

    members = [*with_key("k0", "../../etc/evil"), *with_key("k1", "/abs/evil"),
               *with_key("k2", "a.b.c"), *with_key("k3", 42),
               *pair("dup"), *pair("dup")]  # same member names twice
    return BadShard("bad-keys.tar", "unsafe json keys, repeated key", tar_bytes(members),
                    pairs_written=6, pairs_in=6, drops={"corrupt_record": 1}, matched=5,
                    error="replaced",
                    note="4 unsafe keys replaced by member names; 2nd 'dup' counted corrupt")


# ---------------------------------------------------------------- Parquet

def _img_col(n: int) -> list[bytes]:
    return [jpeg(i) for i in range(n)]


def parquet_missing_image() -> BadShard:
    t = pa.table({"key": ["pm0", "pm1", "pm2"], "texts": [[CAPTION]] * 3})
    return BadShard("bad-missing-image.parquet", "Parquet without an image column",
                    parquet_bytes(t), pairs_written=3, pairs_in=3, drops={"corrupt_record": 3},
                    error="lack 'image'")


def parquet_missing_text() -> BadShard:
    t = pa.table({"key": ["pt0", "pt1"], "image": _img_col(2), "url": ["u0", "u1"]})
    return BadShard("bad-missing-text.parquet", "Parquet without a text column",
                    parquet_bytes(t), pairs_written=2, pairs_in=2, drops={"no_text": 2},
                    error="no text column")


def parquet_extra_columns() -> BadShard:
    t = pa.table({"key": ["px0", "px1"], "image": _img_col(2), "texts": [[CAPTION]] * 2,
                  "width": [8, 8], "blob": [b"\x00\xff", b""],
                  "tags": [["a", "b"], []], "info": [{"x": 1}, {"x": None}]})
    return BadShard("bad-extra-columns.parquet", "Parquet with extra columns", parquet_bytes(t),
                    pairs_written=2, pairs_in=2, matched=2,
                    note="extra columns pass through to the curated json")


def parquet_nulls() -> BadShard:
    imgs = _img_col(6)
    t = pa.table({
        "key": ["pn0", "pn1", "pn2", None, "pn4", "pn5"],
        "image": [None, imgs[1], imgs[2], imgs[3], imgs[4], imgs[5]],
        "texts": [[CAPTION], None, [None, CAPTION], [CAPTION], [], [None, ""]],
    }, schema=pa.schema([("key", pa.string()), ("image", pa.binary()),
                         ("texts", pa.list_(pa.string()))]))
    return BadShard("bad-nulls.parquet", "Parquet with nulls (image, texts, key, elements)",
                    parquet_bytes(t), pairs_written=6, pairs_in=6,
                    drops={"corrupt_record": 1, "no_text": 3}, matched=2,
                    note="null image corrupt; null texts, [] and [null, ''] no_text; "
                         "null key -> row name")


def parquet_bad_keys() -> BadShard:
    t = pa.table({"key": ["../../evil", "/abs", "a.b", "ok", "ok"], "image": _img_col(5),
                  "text": [CAPTION] * 5})
    return BadShard("bad-keys-pq.parquet", "Parquet unsafe keys, repeated key", parquet_bytes(t),
                    pairs_written=5, pairs_in=5, drops={"corrupt_record": 1}, matched=4,
                    error="replaced")


def parquet_truncated() -> BadShard:
    t = pa.table({"key": ["pc0", "pc1"], "image": _img_col(2), "texts": [[CAPTION]] * 2})
    data = parquet_bytes(t)
    return BadShard("bad-truncated-pq.parquet", "Parquet cut in half", data[: len(data) // 2],
                    pairs_written=2, pairs_in=0, error="unreadable Parquet",
                    note="footer lost: nothing to count; the error names the file")


def unknown_format() -> BadShard:
    return BadShard("bad-notes.txt", "a file that is no shard", b"not a shard\n",
                    pairs_written=0, pairs_in=0, error="unknown shard format")


GENERATORS: tuple[Callable[[], BadShard], ...] = (
    truncated_tar, truncated_at_header_tar, corrupt_middle_tar, random_bytes_tar,
    empty_tar_file, truncated_gz_tar, corrupt_xz_tar, concatenated_tar, absolute_path_tar,
    dotdot_path_tar, links_tar, not_image_tar, bomb_tar, non_utf8_tar, empty_captions_tar,
    bad_json_tar, long_caption_tar, no_metadata_scripts_tar, keys_tar, parquet_missing_image,
    parquet_missing_text, parquet_extra_columns, parquet_nulls, parquet_bad_keys,
    parquet_truncated, unknown_format,
)


def build_corpus() -> list[BadShard]:
    """Every bad shard, in memory (deterministic bytes)."""
    shards = [g() for g in GENERATORS]
    names = [shard_name(s.name) for s in shards]  # output files are named after these
    assert len(set(names)) == len(names), names
    return shards


def write_corpus(url: str, shards: list[BadShard] | None = None) -> list[BadShard]:
    """Write the corpus under url (local folder or s3://...); returns the expectations."""
    shards = build_corpus() if shards is None else shards
    for s in shards:
        storage.write_bytes(storage.join(url, s.name), s.data)
    return shards


def expected_totals(shards: Iterable[BadShard]) -> dict[str, Any]:
    """Summed expectations: pairs_in, matched, and pass-1 drops by reason."""
    shards = list(shards)
    drops: Counter = Counter()
    for s in shards:
        drops.update(s.drops)
    return {"pairs_written": sum(s.pairs_written for s in shards),
            "pairs_in": sum(s.pairs_in for s in shards),
            "matched": sum(s.matched for s in shards),
            "drops": {r: drops.get(r, 0) for r in PASS1_REASONS}}


# ---------------------------------------------------------------- metadata

BAD_METADATA: dict[str, bytes] = {
    "not_list": b'{"photo": 0, "sunset": 1}',
    "not_strings": b'["photo", 42, null]',
    "not_json": b"photo\nsunset\n",
    "not_utf8": b'["caf\xe9"]',
}


def write_bad_metadata(url: str, kind: str = "not_list", langs: Iterable[str] = ("en",)
                       ) -> dict[str, str]:
    """A metadata folder whose <lang>.json files are bad in the given way; returns
    {lang: file URL} (the URL every error must name)."""
    out = {}
    for lang in langs:
        u = storage.join(url, f"{lang}.json")
        storage.write_bytes(u, BAD_METADATA[kind])
        out[lang] = u
    return out
