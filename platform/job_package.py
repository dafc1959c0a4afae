"""The package source a Ray job runs: copied into the job's working_dir as `worldclip/`
(source files only, never data, venvs or caches). Why a `worldclip/` folder and not the
repository root: platform/jobs.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from worldclip.platform.config import ConfigError

# What a job needs of the package: source, configs, docs. Never data, venvs or caches.
_SOURCE_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".md", ".cfg"})
_SKIP_DIRS = frozenset({".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
                        ".hypothesis", ".mypy_cache", "tests", "bench", "build", "dist",
                        "node_modules", "worldclip-data", ".ci", "cluster"})
MAX_PACKAGE_BYTES = 50 * 2**20


def package_source_dir() -> Path:
    """The directory of the installed `worldclip` package (the repository root if editable)."""
    import worldclip

    return Path(worldclip.__file__).resolve().parent


def stage_package(dest: Path, source: Path | None = None, skip: tuple[Path, ...] = ()) -> Path:
    """Copy the package source into dest/worldclip (source files only) and return that path.

    Only files with source suffixes are copied, and folders that are venvs, caches, tests or
    data are skipped, so a repository with a 2 GB .venv or a local object store inside still
    ships a few hundred KB.
    """
    source = (source or package_source_dir()).resolve()
    if not (source / "__init__.py").exists() or not (source / "cli.py").exists():
        raise ConfigError(f"job.working_dir={str(source)!r}: not the worldclip package source "
                          "(no __init__.py + cli.py there); give the repository root or leave "
                          "job.working_dir empty to ship the installed package")
    skip_resolved = {p.resolve() for p in skip}
    target = dest / "worldclip"
    total = 0
    for root, dirs, files in os.walk(source):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if d not in _SKIP_DIRS and not d.endswith(".egg-info") and not d.startswith(".")
            and not (here / d / "pyvenv.cfg").exists() and (here / d).resolve() not in
            skip_resolved)
        for name in files:
            src = here / name
            if src.suffix not in _SOURCE_SUFFIXES or src.is_symlink():
                continue
            total += src.stat().st_size
            if total > MAX_PACKAGE_BYTES:
                raise ConfigError(
                    f"package source {source}: more than {MAX_PACKAGE_BYTES >> 20} MB of source "
                    f"files (at {src}); move data out of the package folder or set "
                    "job.working_dir to a clean checkout")
            out = target / src.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    return target
