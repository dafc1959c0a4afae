"""Object storage: every input and output is a URL (plain path, file://, s3://).

One place builds filesystems, so local folders and S3 (AWS or any S3-compatible endpoint such
as MinIO or moto) are the same code for the pipelines and for Ray Data. Credentials come from
config or the standard AWS environment variables and are never logged.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class S3Options:
    """S3 connection settings; empty fields fall back to the AWS environment variables."""

    endpoint_url: str = ""
    region: str = ""
    access_key: str = ""
    secret_key: str = ""

    @classmethod
    def from_env(cls, **overrides: str) -> S3Options:
        env = os.environ
        base = dict(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3", env.get("AWS_ENDPOINT_URL", "")),
            region=env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", "")),
            access_key=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
        )
        base.update({k: v for k, v in overrides.items() if v})
        return cls(**base)

    def __repr__(self) -> str:  # never print secrets
        return f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


_options = S3Options()


def configure(options: S3Options | None = None) -> None:
    """Set process-wide S3 options (from config); None re-reads the environment."""
    global _options
    _options = options or S3Options.from_env()
    _fs_cache.cache_clear()


def s3_options() -> S3Options:
    return S3Options.from_env(
        endpoint_url=_options.endpoint_url,
        region=_options.region,
        access_key=_options.access_key,
        secret_key=_options.secret_key,
    )


def is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def strip_scheme(url: str) -> str:
    """Path inside its filesystem: 's3://b/k' -> 'b/k', 'file:///x' -> '/x'."""
    if is_s3(url):
        return url.split("://", 1)[1]
    if url.startswith("file://"):
        return url[len("file://") :]
    return os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    if is_s3(url) or url.startswith("file://"):
        return posixpath.join(url, *parts)
    return os.path.join(url, *parts)


@functools.lru_cache(maxsize=8)
def _fs_cache(kind: str, opts: S3Options) -> fsspec.AbstractFileSystem:
    if kind == "s3":
        client_kwargs: dict[str, Any] = {}
        if opts.endpoint_url:
            client_kwargs["endpoint_url"] = opts.endpoint_url
        if opts.region:
            client_kwargs["region_name"] = opts.region
        kw: dict[str, Any] = {"client_kwargs": client_kwargs, "skip_instance_cache": True}
        if opts.access_key:
            kw.update(key=opts.access_key, secret=opts.secret_key)
        return fsspec.filesystem("s3", **kw)
    return fsspec.filesystem("file", auto_mkdir=True)


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    """fsspec filesystem for a URL (s3fs for s3://, local otherwise)."""
    return _fs_cache("s3" if is_s3(url) else "file", s3_options())


def arrow_filesystem(url: str) -> pafs.FileSystem:
    """pyarrow filesystem for a URL, the one handed to Ray Data readers and writers.

    S3 goes through the same s3fs client as everything else (wrapped for pyarrow), not
    pyarrow's native S3FileSystem: measured here, the native client's CompleteMultipartUpload
    fails against S3-compatible servers that answer with a minimal body (moto 5.2.5 under
    pytest), and one client means one set of credentials, endpoint and retry settings.
    """
    if not is_s3(url):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem(url)))


def ray_path(url: str) -> tuple[str, pafs.FileSystem]:
    """(path, filesystem) pair for ray.data.read_*/write_* (paths without scheme)."""
    return strip_scheme(url), arrow_filesystem(url)


# ---------------------------------------------------------------- retries

def _transient_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:  # botocore's connection errors are not OSErrors
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        errs += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    return tuple(errs)


TRANSIENT = _transient_errors()
# botocore logs request headers (the access key id) at DEBUG: keep them out of `-v` output
for _name in ("botocore", "aiobotocore", "s3fs", "urllib3"):
    logging.getLogger(_name).setLevel(logging.INFO)


def retry(fn: Callable[[], T], *, what: str, attempts: int = 6, base_delay: float = 0.5) -> T:
    """Call fn, retrying transient I/O errors with exponential backoff and jitter.

    FileNotFoundError / PermissionError / IsADirectoryError are not transient and raise at once.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except TRANSIENT as e:
            if attempt == attempts - 1:
                raise
            delay = base_delay * (2**attempt) * (0.5 + random.random())
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(e).__name__,
                        e, attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- read / write

def exists(url: str) -> bool:
    return retry(lambda: filesystem(url).exists(strip_scheme(url)), what=f"exists {url}")


def read_bytes(url: str) -> bytes:
    def _read() -> bytes:
        with filesystem(url).open(strip_scheme(url), "rb") as f:
            return f.read()

    return retry(_read, what=f"read {url}")


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    try:
        return json.loads(read_bytes(url))
    except json.JSONDecodeError as e:
        raise ValueError(f"{url}: not valid JSON ({e}); fix or regenerate the file") from e


_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{8}$")


def temp_name(path: str) -> str:
    """Name of the temp file beside path that an atomic write renames into place."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def is_temp(path: str) -> bool:
    """True only for names temp_name() makes: an input like 'a.tmp-1.tar' is not one."""
    return bool(_TEMP_RE.search(posixpath.basename(path.rstrip("/"))))


# ---------------------------------------------------------------- raw shards by reference

def _local_stat_tag(st: os.stat_result) -> str:
    return f"mtime_ns:{st.st_mtime_ns}"


def identity(url: str) -> dict[str, Any]:
    """{"size", "etag"} of a raw shard (file or img2dataset `files` folder), so a reference
    into it can be checked as still valid: one HEAD/stat for a file, one listing for a folder.

    S3 etag: the object's ETag; local: mtime_ns. A folder: total size and "dir:" + sha1 over
    the sorted (relative name, size, tag) of its files.
    """
    fs, path = filesystem(url), strip_scheme(url).rstrip("/")

    def _identity() -> dict[str, Any]:
        if not is_s3(url):
            if not os.path.isdir(path):
                st = os.stat(path)
                return {"size": st.st_size, "etag": _local_stat_tag(st)}
            files = []
            for dirpath, _, names in os.walk(path):
                for n in names:
                    full = os.path.join(dirpath, n)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    st = os.stat(full)
                    files.append((rel, st.st_size, _local_stat_tag(st)))
        else:
            info = fs.info(path, refresh=True)
            if info["type"] != "directory":
                return {"size": int(info["size"]), "etag": str(info["ETag"]).strip('"')}
            fs.invalidate_cache(path)
            found = fs.find(path, detail=True)
            files = [(name[len(path) + 1:], int(i["size"]), str(i.get("ETag", "")).strip('"'))
                     for name, i in found.items()]
        digest = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
        return {"size": sum(f[1] for f in files), "etag": f"dir:{digest}"}

    return retry(_identity, what=f"identity {url}")


def read_range(url: str, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a file: one ranged GET on S3.

    A range starting past the end (S3 answers 416, which s3fs raises as OSError EINVAL) is a
    ValueError naming the url, not a transient error to retry.
    """
    fs, path = filesystem(url), strip_scheme(url)

    def _read() -> bytes:
        try:
            return fs.cat_file(path, start=start, end=start + length)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise ValueError(f"{url}: range offset={start} length={length} is not satisfiable "
                             f"({e}); the reference is stale") from e

    return retry(_read, what=f"read {url}[{start}:{start + length}]")


def plan_ranges(ranges: list[tuple[int, int]], size: int, gap: int = 1 << 20,
                whole_fraction: float = 0.5) -> list[tuple[int, int]]:
    """Spans (start, end) to GET for the wanted (offset, length) ranges of a file of size bytes.

    A GET costs a round trip whatever its length, so ranges at most `gap` bytes apart share
    one span; when the distinct wanted bytes are >= whole_fraction of the file, one sequential
    read of the whole file (0, size) beats many ranged ones. Empty ranges need no GET.
    """
    wanted = sorted((o, o + n) for o, n in ranges if n > 0)
    spans: list[tuple[int, int]] = []
    for start, end in wanted:
        if spans and start - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    covered, reach = 0, 0  # distinct wanted bytes (duplicates and overlaps counted once)
    for start, end in wanted:
        covered += max(0, end - max(start, reach))
        reach = max(reach, end)
    if spans and size > 0 and covered >= whole_fraction * size:
        return [(0, size)]
    return spans


def read_ranges(url: str, ranges: list[tuple[int, int]], size: int | None = None,
                gap: int = 1 << 20, whole_fraction: float = 0.5) -> list[bytes]:
    """The bytes of each (offset, length) range, in input order, with one GET per planned span.

    A range past the end of the file (or a file shorter than `size` says) raises ValueError
    naming the url: the reference that pointed there is stale.
    """
    if size is None:
        size = int(identity(url)["size"])
    for o, n in ranges:
        if o < 0 or n < 0 or o + n > size:
            raise ValueError(f"{url}: range offset={o} length={n} is outside the file "
                             f"({size} bytes); the reference is stale")
    spans = plan_ranges(ranges, size, gap, whole_fraction)
    blobs = [read_range(url, s, e - s) for s, e in spans]
    for (s, e), b in zip(spans, blobs, strict=True):
        if len(b) != e - s:
            raise ValueError(f"{url}: {len(b)} bytes at offset {s}, expected {e - s}; the "
                             f"file changed since it was referenced (stale reference)")
    starts = [s for s, _ in spans]
    out = []
    for o, n in ranges:
        if n == 0:
            out.append(b"")
            continue
        i = bisect.bisect_right(starts, o) - 1
        out.append(blobs[i][o - starts[i]:o - starts[i] + n])
    return out


def write_bytes(url: str, data: bytes) -> None:
    """Atomic write: readers see the whole file or nothing.

    Local: write a temp file beside the target, fsync, rename. S3: a single PUT is atomic
    (the object appears only when the upload completes).
    """
    fs = filesystem(url)
    path = strip_scheme(url)
    if is_s3(url):
        retry(lambda: fs.pipe_file(path, data), what=f"write {url}")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, obj: Any, indent: int | None = 2) -> None:
    write_text(url, json.dumps(obj, indent=indent, ensure_ascii=False, default=str))


@contextlib.contextmanager
def atomic_writer(url: str) -> Iterator[io.BufferedIOBase]:
    """Stream a large file and commit it atomically (local: temp + rename; S3: multipart
    upload that only completes on close)."""
    fs = filesystem(url)
    path = strip_scheme(url)
    if is_s3(url):
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            # abort the multipart upload: the object never appears
            with contextlib.suppress(Exception):
                f.discard()
                f.closed = True  # discarded: nothing left for __del__ to flush
            raise
        retry(f.close, what=f"commit {url}")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def glob(url_pattern: str) -> list[str]:
    """Sorted URLs matching a glob pattern (scheme preserved)."""
    fs = filesystem(url_pattern)
    paths = retry(lambda: fs.glob(strip_scheme(url_pattern)), what=f"glob {url_pattern}")
    paths = [p for p in sorted(paths) if not is_temp(p)]
    if is_s3(url_pattern):
        return [f"s3://{p}" for p in paths]
    if url_pattern.startswith("file://"):
        return [f"file://{p}" for p in paths]
    return list(paths)


def makedirs(url: str) -> None:
    if not is_s3(url):
        os.makedirs(strip_scheme(url), exist_ok=True)


def remove(url: str, recursive: bool = False) -> None:
    fs = filesystem(url)
    path = strip_scheme(url)
    if fs.exists(path):
        retry(lambda: fs.rm(path, recursive=recursive), what=f"remove {url}")


def local_dir(url: str, cache_root: str | None = None) -> str:
    """A local directory with the contents of url: the path itself when local, else a
    download (cached per URL under cache_root or the temp dir)."""
    if not is_s3(url):
        return strip_scheme(url)
    import hashlib
    import tempfile

    root = cache_root or os.path.join(tempfile.gettempdir(), "worldclip-cache")
    dest = os.path.join(root, hashlib.sha256(url.encode()).hexdigest()[:16])
    if not os.path.isdir(dest):
        tmp = temp_name(dest)
        download_dir(url, tmp)
        os.makedirs(root, exist_ok=True)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race; its copy is complete
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_dir(url: str, dest: str) -> None:
    """Copy the directory at url into the local folder dest (with retries)."""
    fs = filesystem(url)
    retry(lambda: fs.get(strip_scheme(url).rstrip("/") + "/", dest.rstrip("/") + "/",
                         recursive=True), what=f"download {url}")


def upload_dir(local: str, url: str) -> None:
    """Copy a local directory to url (files written atomically one by one)."""
    for dirpath, _, files in os.walk(local):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), local)
            with open(os.path.join(dirpath, f), "rb") as fh:
                write_bytes(join(url, *rel.split(os.sep)), fh.read())
