"""Object storage: every input and output is a URL (plain path, file://, s3://).

One place builds filesystems, so local folders and S3 (AWS or any S3-compatible endpoint such
as MinIO or moto) are the same code for the pipelines and for Ray Data. Credentials come from
config or the standard AWS environment variables and are never logged.
"""

from __future__ import annotations

import contextlib
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
