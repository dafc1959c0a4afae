"""`worldclip metadata`: count the configured sources (Wikipedia dumps and pageviews by a Ray
Data job: read -> map_batches -> groupby-sum), build every language, fold codes into groups,
write the lists and the manifest.

Output: ``{out}/{group}.json`` (a JSON list of strings, id = position), ``{out}/groups.json``
(LID label -> group; unknown labels go to "other") and ``{out}/manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig

from worldclip.pipelines.metadata_build.build import (
    Caps,
    LanguageMetadata,
    LanguageSources,
    build_language,
    merge_lists,
)
from worldclip.pipelines.metadata_build.codes import (
    MAX_ENTRY_CHARS,
    fold_code,
    group_map,
    group_of,
    lid_targets,
    order_codes,
)
from worldclip.pipelines.metadata_build.pageviews import count_pageview_lines
from worldclip.pipelines.metadata_build.wiki import NgramCounts, count_dump_lines
from worldclip.pipelines.metadata_build.wordfreq_source import (
    WORDFREQ_NOMINAL_TOKENS,
    WORDFREQ_TO_WIKI,
    wordfreq_languages,
    wordfreq_unigrams,
)
from worldclip.pipelines.metadata_build.wordnet import read_wordnet
from worldclip.platform import storage
from worldclip.platform.config import ConfigError, save_config

log = logging.getLogger(__name__)


_ROW_SCHEMA = pa.schema([("lang", pa.string()), ("kind", pa.string()), ("key", pa.string()),
                         ("count", pa.int64())])


def _rows_batch(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    """(lang, kind, key, count) rows as a table with a fixed schema (empty batches too)."""
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return pa.table([list(c) for c in cols], schema=_ROW_SCHEMA)


def _count_dump_batch(batch: dict[str, Any]) -> pa.Table:
    rows: list[tuple[str, str, str, int]] = []
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        per_code, skipped = count_dump_lines(bytes(data).split(b"\n"), str(path))
        if skipped:
            log.warning("%s: skipped %d unreadable lines", path, skipped)
        for code, c in per_code.items():
            rows.extend((code, "u", k, v) for k, v in c.unigrams.items())
            rows.extend((code, "b", k, v) for k, v in c.bigrams.items())
    return _rows_batch(rows)


def _count_pageview_batch(batch: dict[str, Any]) -> pa.Table:
    rows: list[tuple[str, str, str, int]] = []
    for data in batch["bytes"]:
        for code, titles in count_pageview_lines(bytes(data).split(b"\n")).items():
            rows.extend((code, "t", k, v) for k, v in titles.items())
    return _rows_batch(rows)


def _ray_counts(url_glob: str, what: str, fn: Any) -> dict[tuple[str, str], Counter[str]]:
    """read_binary_files(glob) -> map_batches(fn) -> groupby(lang, kind, key).sum(count)."""
    import ray

    urls = storage.glob(url_glob)
    if not urls:
        raise FileNotFoundError(
            f"metadata.{what}={url_glob!r}: no file matches; fix the glob or set it to ''")
    paths = [storage.strip_scheme(u) for u in urls]
    fs = storage.arrow_filesystem(urls[0])
    log.info("counting %s: %d files", what, len(paths))
    ds = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
    counted = ds.map_batches(fn, batch_size=1, batch_format="numpy")
    # a partition per file up to 2 per CPU: the default (200) costs seconds on small inputs
    cpus = int(ray.cluster_resources().get("CPU", 1))
    partitions = max(1, min(len(paths), 2 * cpus))
    summed = counted.groupby(["lang", "kind", "key"], num_partitions=partitions).sum("count")
    out: dict[tuple[str, str], Counter[str]] = {}
    for b in summed.iter_batches(batch_format="pyarrow", batch_size=65536):
        cols = b.to_pydict()
        for lang, kind, key, n in zip(cols["lang"], cols["kind"], cols["key"],
                                      cols["sum(count)"], strict=True):
            out.setdefault((lang, kind), Counter())[key] = int(n)
    return out


def count_wiki_dumps_ray(url_glob: str) -> dict[str, NgramCounts]:
    """Unigram and bigram counts per wiki code over every dump file of a glob (Ray Data)."""
    raw = _ray_counts(url_glob, "wiki_dumps", _count_dump_batch)
    out: dict[str, NgramCounts] = {}
    for (code, kind), counter in raw.items():
        c = out.setdefault(code, NgramCounts())
        (c.unigrams if kind == "u" else c.bigrams).update(counter)
    return out


def count_pageviews_ray(url_glob: str) -> dict[str, Counter[str]]:
    """Summed views per title per wiki code over every pageview file of a glob (Ray Data)."""
    return {code: counter for (code, _), counter in
            _ray_counts(url_glob, "pageviews", _count_pageview_batch).items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip metadata`: build every configured language's metadata and the manifest."""
    t0 = time.perf_counter()
    m = cfg.metadata
    caps = Caps.from_config(m)
    wanted = {fold_code(WORDFREQ_TO_WIKI.get(c, c)) for c in (m.languages or [])}
    targets = lid_targets()

    def selected(code: str) -> bool:
        return not wanted or group_of(code, targets) in wanted

    wordnet: dict[str, list[str]] = {}
    sources: dict[str, Any] = {}
    if m.wordnet_dir:
        wordnet, info = read_wordnet(m.wordnet_dir)
        sources["wordnet"] = {"dir": m.wordnet_dir, **info,
                              "languages": {k: len(v) for k, v in sorted(wordnet.items())}}
    dumps: dict[str, NgramCounts] = {}
    pageviews: dict[str, Counter[str]] = {}
    if m.wiki_dumps or m.pageviews:
        from worldclip.platform.runtime import init_ray

        init_ray(cfg)
    if m.wiki_dumps:
        dumps = count_wiki_dumps_ray(m.wiki_dumps)
        sources["wiki_dumps"] = {"glob": m.wiki_dumps, "languages": sorted(dumps)}
    if m.pageviews:
        pageviews = count_pageviews_ray(m.pageviews)
        sources["pageviews"] = {"glob": m.pageviews, "languages": sorted(pageviews)}
    wf_langs: dict[str, str] = {}
    if m.use_wordfreq:
        from importlib.metadata import version

        wf_langs = {k: v for k, v in wordfreq_languages().items() if selected(k)}
        sources["wordfreq"] = {"version": version("wordfreq"),
                               "nominal_tokens": WORDFREQ_NOMINAL_TOKENS,
                               "languages": sorted(wf_langs)}

    codes = sorted(c for c in {*wordnet, *dumps, *pageviews, *wf_langs} if selected(c))
    if wanted:
        missing = wanted - {group_of(c, targets) for c in codes}
        if missing:
            raise ConfigError(
                f"metadata.languages={list(m.languages)}: no source provides "
                f"{sorted(missing)}; remove them, or point metadata.wiki_dumps / pageviews / "
                "wordnet_dir at data for them (wordfreq has: "
                f"{', '.join(sorted(wordfreq_languages()))})")
    if not codes:
        raise ConfigError(
            "metadata: no source configured; set metadata.use_wordfreq=true or one of "
            "metadata.wordnet_dir / metadata.wiki_dumps / metadata.pageviews")

    built: dict[str, LanguageMetadata] = {}
    for code in codes:
        counts = dumps.get(code)
        if counts is not None and counts.unigrams:
            src = LanguageSources(unigrams=counts.unigrams, unigram_source="wiki",
                                  bigrams=counts.bigrams)
        elif code in wf_langs:
            uni = wordfreq_unigrams(wf_langs[code])
            src = LanguageSources(unigrams=uni, unigram_source="wordfreq")
        else:
            src = LanguageSources()
        src.wordnet = wordnet.get(code, [])
        src.titles = pageviews.get(code, {})
        built[code] = build_language(code, src, caps)
        log.info("%s: %d entries %s", code, len(built[code].entries), built[code].by_source())

    members: dict[str, list[str]] = {}
    for code in codes:
        members.setdefault(group_of(code, targets), []).append(code)
    out = m.out
    storage.makedirs(out)
    languages: dict[str, Any] = {}
    for group in sorted(members):
        order = order_codes(group, members[group])
        md = merge_lists([built[c] for c in order], group)
        data = json.dumps(md.entries, ensure_ascii=False).encode("utf-8")
        storage.write_bytes(storage.join(out, f"{group}.json"), data)
        languages[group] = {"file": f"{group}.json", "entries": len(md.entries),
                            "sha256": _sha256(data), "by_source": md.by_source(),
                            "codes": order, "per_code": md.stats["per_code"]}
    groups = group_map(languages)
    storage.write_json(storage.join(out, "groups.json"), groups)
    seconds = time.perf_counter() - t0
    manifest = {
        "format": "worldclip-metadata/1",
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "order": ["numbers", "wordnet", "unigram", "bigram", "title"],
        "pmi": "log2(c(xy) * N / (c(x) * c(y))), N = total unigram tokens; kept if > "
               "bigram_min_pmi",
        "caps": {**caps.__dict__, "max_entry_chars": MAX_ENTRY_CHARS},
        "sources": sources,
        "languages": languages,
        "groups": groups,
        "groups_file": "groups.json",
    }
    storage.write_json(storage.join(out, "manifest.json"), manifest)
    save_config(cfg, out)
    log.info("metadata: %d groups, %d entries in %.1fs -> %s", len(languages),
             sum(v["entries"] for v in languages.values()), seconds, out)
    return {"out": out, "groups": len(languages), "build_seconds": round(seconds, 2),
            "entries": {g: v["entries"] for g, v in languages.items()}}
