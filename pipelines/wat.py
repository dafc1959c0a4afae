"""Common Crawl WAT files -> text-only image records (the front door of text-first curation).

MetaCLIP curates *before* it downloads (docs/curation.md, "Text-first curation from Common
Crawl"): a WAT file holds, per crawled HTML page, a WARC `metadata` record whose JSON lists
the page's links; every `<img>` is a link with path `IMG@/src`, its `url` (often relative)
and the tag's `alt` / `title` / `data-image-title` attributes. Those attributes are the
texts that LID, matching and balancing need -- no image is fetched until curation kept it.

One WAT file = one Ray Data task = one output shard `<wat.out>/shards/<name>.parquet`:

    key               stable hash of the normalised absolute image URL (MetaCLIP's gen_uuid:
                      sha224 of the URL without tabs/spaces, first 24 hex chars)
    url, page_url     the absolute image URL; the page it was first seen on
    alt, title, data-image-title
                      the attribute texts, one list each (merged over duplicate records)
    snapshot, wat_file, occurrences

Every WARC record lands in exactly one record bucket and every IMG@/src link in exactly one
link bucket (written, or dropped with a reason), so `wat` closes its own accounting:
`image_links = records written + sum(link drops)`. Duplicate image URLs inside one file are
merged deterministically (first occurrence's page; texts appended in file order, exact
duplicates removed). Across files nothing is merged here (files are independent units of
work and of resume); `download-list` fetches each URL once and the join gives the image back
to every pair that references it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from worldclip.platform import storage
from worldclip.platform.config import ConfigError, save_config

log = logging.getLogger(__name__)

TEXT_ATTRS = ("alt", "title", "data-image-title")  # MetaCLIP's KOI, in its order
WAT_SUFFIXES = (".warc.wat.gz", ".wat.gz", ".warc.wat", ".wat")
_SNAPSHOT = re.compile(r"CC-MAIN-\d{4}-\d{2}")
MAX_URL_CHARS = 2048  # longer "URLs" are mostly data: blobs or garbage; no downloader takes them
MAX_TEXT_CHARS = 4096

SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("url", pa.string()), ("page_url", pa.string()),
    *[(a, pa.list_(pa.string())) for a in TEXT_ATTRS],
    ("snapshot", pa.string()), ("wat_file", pa.string()), ("occurrences", pa.int32()),
])

# WARC record buckets (each record in exactly one); the malformed ones are the reasons a
# record could not be used although it should have been.
RECORD_MALFORMED = ("truncated_record", "malformed_json", "no_envelope", "bad_links")
# IMG@/src link drops (each link written or in exactly one).
LINK_DROPS = ("bad_url", "no_text", "duplicate_url")


def image_key(url: str) -> str:
    """MetaCLIP's gen_uuid: sha224 of the absolute URL without tabs and spaces, 96 bits hex.

    Stable across runs and machines, and a safe WebDataset member stem (hex, no dots)."""
    url = url.replace("\t", "").replace(" ", "")
    return hashlib.sha224(url.encode("utf-8")).hexdigest()[:24]


def normalise_url(raw: Any, base: str) -> str | None:
    """The absolute http(s) URL of an image link, or None (data:, javascript:, garbage).

    Relative URLs resolve against the page's <base href> when it has one, else the page URL
    (the HTML rule; MetaCLIP resolves against the page URL only). The fragment is dropped:
    it never reaches the server, so `a.jpg#x` and `a.jpg` are the same image."""
    if not isinstance(raw, str):
        return None
    raw = raw.strip()
    if not raw or len(raw) > MAX_URL_CHARS:
        return None
    try:
        url = urljoin(base, raw)
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 netloc
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    url = url.split("#", 1)[0]
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a broken page
        return None
    return url


def clean_attr(v: Any) -> str | None:
    """An attribute text as MetaCLIP keeps it: newlines to spaces, stripped, non-empty."""
    if not isinstance(v, str):
        return None
    v = v.replace("\n", " ").replace("\r", " ").strip()
    if not v:
        return None
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return v[:MAX_TEXT_CHARS]


def snapshot_of(url: str, configured: str = "") -> str:
    """The crawl snapshot (CC-MAIN-YYYY-WW): configured, else found in the file's path."""
    if configured:
        return configured
    m = _SNAPSHOT.search(url)
    return m.group(0) if m else ""


def wat_name(url: str) -> str:
    """Output shard name of a WAT file: its base name without the WAT suffix."""
    base = posixpath.basename(url)
    for s in WAT_SUFFIXES:
        if base.endswith(s):
            return base[: -len(s)]
    return base


@dataclass
class WatResult:
    """One WAT file's records and accounting."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> row, file order
    records: Counter = field(default_factory=Counter)  # WARC record bucket -> n
    links: Counter = field(default_factory=Counter)  # image_links, written, drops
    errors: list[str] = field(default_factory=list)

    def table(self) -> pa.Table:
        cols: dict[str, list] = {n: [] for n in SHARD_SCHEMA.names}
        for row in self.rows.values():
            for n in SHARD_SCHEMA.names:
                cols[n].append(row[n])
        return pa.Table.from_pydict(cols, schema=SHARD_SCHEMA)

    def stats(self, wat_file: str, snapshot: str) -> dict[str, Any]:
        written = len(self.rows)
        drops = {k: int(self.links[k]) for k in LINK_DROPS if self.links[k]}
        return {"wat_file": wat_file, "snapshot": snapshot,
                "warc_records": int(sum(self.records.values())),
                "records": dict(sorted(self.records.items())),
                "malformed": {k: int(self.records[k]) for k in RECORD_MALFORMED
                              if self.records[k]},
                "image_links": int(self.links["image_links"]), "written": written,
                "link_drops": drops, "errors": self.errors}


def _links_of(payload: Any) -> tuple[str, Any, str]:
    """(bucket, links, base href) of a WAT JSON document."""
    env = payload.get("Envelope") if isinstance(payload, dict) else None
    meta = env.get("Payload-Metadata") if isinstance(env, dict) else None
    if not isinstance(meta, dict):
        return "no_envelope", None, ""
    http = meta.get("HTTP-Response-Metadata")
    if not isinstance(http, dict):
        return "not_http_response", None, ""  # request / non-HTTP records: normal in a WAT
    html = http.get("HTML-Metadata")
    if not isinstance(html, dict):
        return "not_html", None, ""  # images, PDFs, robots.txt responses
    links = html.get("Links")
    if links is None:
        return "no_links", None, ""
    if not isinstance(links, list):
        return "bad_links", None, ""
    head = html.get("Head")
    base = head.get("Base") if isinstance(head, dict) else None
    return "with_links", links, base if isinstance(base, str) else ""


def add_page(res: WatResult, page_url: str, links: list[Any], base: str, snapshot: str,
             wat_file: str) -> None:
    """Every IMG@/src link of one page: written (new or merged) or dropped with a reason."""
    page_base = urljoin(page_url, base) if base else page_url
    for link in links:
        if not isinstance(link, dict):
            continue
        path = link.get("path")
        if not isinstance(path, str) or not path.startswith("IMG@/src"):
            continue  # A@/href, LINK@/href, SCRIPT@/src...: not an image
        res.links["image_links"] += 1
        url = normalise_url(link.get("url"), page_base)
        if url is None:
            res.links["bad_url"] += 1
            continue
        texts = {a: t for a in TEXT_ATTRS if (t := clean_attr(link.get(a))) is not None}
        if not texts:
            res.links["no_text"] += 1  # MetaCLIP keeps only images with a text attribute
            continue
        key = image_key(url)
        row = res.rows.get(key)
        if row is None:
            res.rows[key] = {"key": key, "url": url, "page_url": page_url,
                             **{a: [texts[a]] if a in texts else [] for a in TEXT_ATTRS},
                             "snapshot": snapshot, "wat_file": wat_file, "occurrences": 1}
            continue
        res.links["duplicate_url"] += 1  # merged into the first record of this URL
        row["occurrences"] += 1
        for a, t in texts.items():
            if t not in row[a]:
                row[a].append(t)


def parse_wat(stream: io.BufferedIOBase | io.BytesIO, wat_file: str, snapshot: str = ""
              ) -> WatResult:
    """A WAT file (per-record gzip, as Common Crawl writes it, or plain) -> WatResult.

    A damaged WARC stream keeps the records read before the damage and reports it: warcio
    cannot resynchronise inside a gzip member."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    res = WatResult()
    snap = snapshot_of(wat_file, snapshot)
    try:
        for rec in ArchiveIterator(stream):
            kind = rec.rec_type
            if kind != "metadata":
                res.records[kind if kind == "warcinfo" else "not_metadata"] += 1
                continue
            ctype = (rec.rec_headers.get_header("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/json":
                res.records["not_json_metadata"] += 1
                continue
            page = rec.rec_headers.get_header("WARC-Target-URI") or ""
            raw = rec.content_stream().read()
            if rec.length is not None and len(raw) < rec.length:
                # warcio hands out a short payload silently when the file ends mid-record
                res.records["truncated_record"] += 1
                res.errors.append(f"{wat_file}: record for {page!r} ends after {len(raw)} of "
                                  f"{rec.length} bytes (truncated file); re-copy the file")
                continue
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                res.records["malformed_json"] += 1
                continue
            bucket, links, base = _links_of(payload)
            res.records[bucket] += 1
            if links is not None:
                add_page(res, page, links, base, snap, wat_file)
    except (ArchiveLoadFailed, OSError, EOFError, ValueError) as e:
        why = " ".join(str(e).split())[:300]
        n = sum(res.records.values())
        res.errors.append(f"{wat_file}: unreadable WARC stream after {n} records ({why}); "
                          "records after the damage are lost, re-copy the file")
    return res


# ============================================================== Ray wiring

def _process(batch: dict[str, Any], out: str, snapshot: str) -> dict[str, list]:
    """Ray Data task: one WAT file -> its shard + stats (stats last: marks the file done)."""
    stats_out = []
    for url in batch["url"]:
        url = str(url)
        fs = storage.filesystem(url)
        with fs.open(storage.strip_scheme(url), "rb") as f:
            res = parse_wat(f, url, snapshot)
        name = wat_name(url)
        stats = res.stats(url, snapshot_of(url, snapshot))
        buf = io.BytesIO()
        pq.write_table(res.table(), buf)
        storage.write_bytes(storage.join(out, "shards", f"{name}.parquet"), buf.getvalue())
        storage.write_json(storage.join(out, "stats", f"{name}.json"), stats)
        stats_out.append(json.dumps(stats))
    return {"stats": stats_out}


def list_wat_files(pattern: str) -> list[str]:
    if not pattern:
        raise ConfigError("config wat.input='': give a glob of Common Crawl WAT files, e.g. "
                          "wat.input='s3://commoncrawl/crawl-data/CC-MAIN-2024-18/segments/*/"
                          "wat/*.warc.wat.gz'")
    urls = [u for u in storage.glob(pattern) if u.endswith(WAT_SUFFIXES)]
    if not urls:
        raise ConfigError(f"config wat.input={pattern!r}: no WAT files match (names end in "
                          f"{', '.join(WAT_SUFFIXES)})")
    names = [wat_name(u) for u in urls]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise ConfigError(f"config wat.input={pattern!r}: WAT file names {dup[:3]} repeat; "
                          "shards are named after files, so give one snapshot per wat.out")
    return urls


def summarise(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Merged accounting of every file; raises if a link went missing."""
    from worldclip.platform.accounting import merge

    links_in = sum(s["image_links"] for s in stats)
    written = sum(s["written"] for s in stats)
    drops = merge(s["link_drops"] for s in stats)
    if links_in != written + sum(drops.values()):
        raise RuntimeError(f"wat accounting broken: {links_in} image links, {written} written "
                           f"+ {dict(drops)} dropped")
    return {"files": len(stats), "warc_records": sum(s["warc_records"] for s in stats),
            "records": dict(merge(s["records"] for s in stats)),
            "malformed": dict(merge(s["malformed"] for s in stats)),
            "image_links": links_in, "written": written, "link_drops": dict(drops),
            "identity": f"{links_in} = {written} + {sum(drops.values())}",
            "errors": [e for s in stats for e in s["errors"]]}


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip wat`: every WAT file of wat.input -> text-only Parquet shards in wat.out."""
    import ray

    from worldclip.platform.runtime import init_ray

    init_ray(cfg)
    started = time.time()
    w = cfg.wat
    urls = list_wat_files(w.input)
    done = {posixpath.basename(u)[: -len(".json")]
            for u in storage.glob(storage.join(w.out, "stats", "*.json"))}
    todo = [u for u in urls if wat_name(u) not in done]
    log.info("wat: %d files, %d already done, %d to do", len(urls), len(urls) - len(todo),
             len(todo))
    if todo:
        ds = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(_process, batch_size=1, num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=min(int(w.concurrency),
                                                                      len(todo))),
                            fn_kwargs={"out": w.out, "snapshot": w.snapshot})
        for row in ds.iter_rows():
            for e in json.loads(row["stats"])["errors"]:
                log.warning(e)
    stats = [storage.read_json(storage.join(w.out, "stats", f"{wat_name(u)}.json"))
             for u in urls]
    summary = summarise(stats)
    summary["wall_s"] = round(time.time() - started, 2)
    storage.write_json(storage.join(w.out, "wat.json"), summary)
    save_config(cfg, w.out)
    return {k: summary[k] for k in ("files", "warc_records", "malformed", "image_links",
                                    "written", "link_drops", "identity", "wall_s")}


# ============================================================== writing (fixtures, benches)

def wat_document(page_url: str, links: list[dict[str, Any]], title: str = "",
                 base: str = "") -> dict[str, Any]:
    """The JSON of one WAT metadata record as Common Crawl's WAT generator lays it out."""
    head: dict[str, Any] = {"Title": title} if title else {}
    if base:
        head["Base"] = base
    return {
        "Container": {"Filename": "page.warc.gz", "Compressed": True, "Offset": "0",
                      "Gzip-Metadata": {"Deflate-Length": "0", "Header-Length": "10",
                                        "Footer-Length": "8", "Inflated-Length": "0"}},
        "Envelope": {
            "Format": "WARC", "WARC-Header-Length": "0", "Actual-Content-Length": "0",
            "Block-Digest": "sha1:AAAA",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url,
                                     "WARC-Date": "2024-04-12T10:13:54Z"},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": "200",
                                         "Reason": "OK"},
                    "Headers": {"Content-Type": "text/html; charset=UTF-8"},
                    "Headers-Length": "0", "Entity-Length": "0",
                    "Entity-Trailing-Slop-Length": "0",
                    "HTML-Metadata": {"Head": head, "Links": links}}}}}


def write_wat(records: list[tuple[str, bytes | dict[str, Any]]], url: str) -> None:
    """A WAT file from (target URI, JSON document or raw payload bytes) pairs: a warcinfo
    record, then one WARC/1.0 `metadata` record (application/json) per pair, gzip per record
    as Common Crawl writes them (warcio's WARCWriter)."""
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True, warc_version="WARC/1.0")
    w.write_record(w.create_warcinfo_record(posixpath.basename(url),
                                            {"software": "worldclip-fixture",
                                             "format": "WARC File Format 1.0"}))
    for target, doc in records:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8")
        w.write_record(w.create_warc_record(
            target, "metadata", payload=io.BytesIO(payload),
            warc_headers_dict={"Content-Type": "application/json",
                               "WARC-Refers-To": f"<urn:uuid:{uuid.uuid4()}>"}))
    storage.write_bytes(url, buf.getvalue())
