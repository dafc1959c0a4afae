"""Text-first curation after the text: download lists for img2dataset, and the join back.

docs/curation.md, "Text-first curation from Common Crawl":

    worldclip wat -> worldclip curate (text-only shards) -> worldclip download-list
        -> img2dataset -> worldclip join | worldclip train download.images=...

* pass 2 of a text-only curation writes, in offline mode, `kept/<shard>.parquet` (the kept
  pairs, the drawn caption, no image) instead of image tars; online mode writes its index as
  always, with `url` as the image reference.
* `download-list` turns those into img2dataset's input: Parquet files with `url`, `caption`
  and our key in a column named `uid` -- img2dataset overwrites any column called `key` with
  its own shard-position key (downloader.py builds `meta = {..., "key": str_key}`), so ours
  travels as `--save_additional_columns '["uid"]'` and comes back in every `.json` and in the
  sidecar `.parquet`. Each URL is listed once over the whole curation (one fetch per image).
* `join` reads img2dataset's output (webdataset or parquet output format), finds every kept
  pair's image by `uid` and materialises an ordinary curated dataset (offline: shards/*.tar,
  online: index/*.parquet with images), so the training stream needs no special case. Pairs
  whose download failed are counted `download_failed`, and the data card says how many kept
  pairs the web lost.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from worldclip.pipelines.arrowio import parquet_bytes
from worldclip.platform import accounting, storage
from worldclip.platform.config import ConfigError, save_config

log = logging.getLogger(__name__)

KEY_COL = "uid"  # our key in img2dataset's input and output (not "key": see module doc)
LIST_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()),
                         (KEY_COL, pa.string())])
KEPT_SCHEMA = pa.schema([
    ("key", pa.string()), ("url", pa.string()), ("text", pa.string()),
    ("texts", pa.list_(pa.string())), ("lang", pa.string()),
    ("entry_ids", pa.list_(pa.int32())), ("prob", pa.float64()), ("meta", pa.string()),
])
I2D_IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")  # img2dataset --encode_format values
I2D_FAILED = ("failed_to_download", "failed_to_resize")


def _name(url: str, ext: str) -> str:
    return posixpath.basename(url)[: -len(ext)]


# ============================================================== pass 2 hook (offline)

def write_kept(table: pa.Table, keep: np.ndarray, chosen: np.ndarray,
               text_probs: list[list[float]], url: str) -> None:
    """The kept pairs of a text-only match table, with the caption drawn for training."""
    rows: dict[str, list] = {n: [] for n in KEPT_SCHEMA.names}
    cols = {n: table.column(n).to_pylist() for n in ("key", "url", "texts", "langs",
                                                        "entry_ids", "meta")}
    for j in np.flatnonzero(keep):
        c = int(chosen[j])
        rows["key"].append(cols["key"][j])
        rows["url"].append(cols["url"][j])
        rows["text"].append(cols["texts"][j][c])
        rows["texts"].append(cols["texts"][j])
        rows["lang"].append(cols["langs"][j][c])
        rows["entry_ids"].append(cols["entry_ids"][j][c])
        rows["prob"].append(float(text_probs[j][c]))
        rows["meta"].append(cols["meta"][j])
    storage.write_bytes(url, parquet_bytes(pa.Table.from_pydict(rows, schema=KEPT_SCHEMA)))


def curated_files(balanced_out: str) -> tuple[str, list[str]]:
    """(mode, files) of a text-only curation: kept/*.parquet (offline) or index/*.parquet."""
    kept = storage.glob(storage.join(balanced_out, "kept", "*.parquet"))
    if kept:
        return "offline", kept
    index = storage.glob(storage.join(balanced_out, "index", "*.parquet"))
    if index:
        t = pq.read_table(io.BytesIO(storage.read_bytes(index[0])), columns=["url"])
        if t.num_rows and t.column("url").null_count == t.num_rows:
            raise ConfigError(f"config curation.balanced_out={balanced_out!r}: its index holds "
                              "images already (curated from image shards); train on it directly")
        return "online", index
    if storage.glob(storage.join(balanced_out, "shards", "*.tar")):
        raise ConfigError(f"config curation.balanced_out={balanced_out!r}: holds image shards "
                          "(curated from shards with images) -- nothing to download; train on it")
    raise ConfigError(f"config curation.balanced_out={balanced_out!r}: no text-first curation "
                      "(kept/*.parquet or index/*.parquet); run `worldclip curate` on "
                      "`worldclip wat` shards first")


# ============================================================== download-list

def build_download_list(balanced_out: str, list_out: str) -> dict[str, Any]:
    """One img2dataset input Parquet per curated file; every URL listed once overall.

    Runs on the driver over three narrow columns: the kept set is a small fraction of the
    pool (~10%, docs/curation.md), and a global "listed once" needs one place that sees
    every key."""
    mode, files = curated_files(balanced_out)
    seen: set[str] = set()
    pairs = dup = 0
    out_files = []
    for f in files:
        cols = ["key", "url", "text" if mode == "offline" else "texts"]
        t = pq.read_table(io.BytesIO(storage.read_bytes(f)), columns=cols)
        keys, urls = t.column("key").to_pylist(), t.column("url").to_pylist()
        caps = t.column(cols[2]).to_pylist()
        rows: dict[str, list] = {"url": [], "caption": [], KEY_COL: []}
        for k, u, c in zip(keys, urls, caps, strict=True):
            pairs += 1
            if k in seen:  # the same image URL curated in another shard: fetched once
                dup += 1
                continue
            seen.add(k)
            rows["url"].append(u)
            rows["caption"].append(c if mode == "offline" else (c[0] if c else ""))
            rows[KEY_COL].append(k)
        if rows["url"]:
            url = storage.join(list_out, f"{_name(f, '.parquet')}.parquet")
            storage.write_bytes(url, parquet_bytes(pa.Table.from_pydict(rows,
                                                                         schema=LIST_SCHEMA)))
            out_files.append(url)
    stats = {"mode": mode, "curated_files": len(files), "pairs": pairs, "urls": len(seen),
             "duplicate_urls": dup, "list_files": len(out_files), "out": list_out,
             "img2dataset": img2dataset_command(list_out, "<images>")}
    storage.write_json(storage.join(list_out, "_list.json"), stats)
    return stats


def img2dataset_command(list_out: str, images: str) -> str:
    """The img2dataset command line that consumes our list and keeps our keys."""
    return (f"img2dataset --url_list {list_out} --input_format parquet --url_col url "
            f"--caption_col caption --save_additional_columns '[\"{KEY_COL}\"]' "
            f"--output_format webdataset --output_folder {images} --encode_format jpg "
            "--image_size 256 --resize_mode keep_ratio --processes_count 16 --thread_count 64")


def run_download_list(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip download-list`: the URLs to fetch, in img2dataset's input format."""
    stats = build_download_list(cfg.curation.balanced_out, cfg.download.list_out)
    save_config(cfg, cfg.download.list_out)
    return stats


# ============================================================== img2dataset output

def read_download_status(images: str) -> tuple[str, dict[str, tuple[str, str, str]]]:
    """(output format, {uid: (shard base URL, img2dataset key, status)}) from img2dataset's
    metadata (the sidecar .parquet of each .tar; the .parquet itself in parquet format)."""
    tars = storage.glob(storage.join(images, "*.tar"))
    fmt = "webdataset" if tars else "parquet"
    metas = [u for u in storage.glob(storage.join(images, "*.parquet"))]
    if not metas:
        raise ConfigError(f"config download.images={images!r}: no img2dataset output "
                          "(NNNNN.tar + NNNNN.parquet, or NNNNN.parquet); run img2dataset with "
                          "--output_format webdataset or parquet")
    out: dict[str, tuple[str, str, str]] = {}
    for m in metas:
        with storage.filesystem(m).open(storage.strip_scheme(m), "rb") as f:
            pf = pq.ParquetFile(f)  # three narrow columns, never the image column
            names = pf.schema_arrow.names
            t = pf.read(columns=[KEY_COL, "key", "status"]) if KEY_COL in names else None
        if t is None:
            raise ConfigError(f"config download.images={images!r}: {m} has no {KEY_COL!r} "
                              f"column; run img2dataset with --save_additional_columns "
                              f"'[\"{KEY_COL}\"]' so our keys survive")
        base = m[: -len(".parquet")]
        for uid, key, status in zip(t.column(KEY_COL).to_pylist(), t.column("key").to_pylist(),
                                    t.column("status").to_pylist(), strict=True):
            prev = out.get(uid)
            if prev is None or (prev[2] != "success" and status == "success"):
                out[uid] = (base, str(key), str(status))
    return fmt, out


def load_images(base: str, fmt: str, keys: set[str]) -> dict[str, bytes]:
    """img2dataset key -> image bytes, for the wanted keys of one img2dataset shard."""
    found: dict[str, bytes] = {}
    if fmt == "parquet":
        t = pq.read_table(io.BytesIO(storage.read_bytes(base + ".parquet")))
        col = next((c for c in I2D_IMAGE_EXTS if c in t.column_names), None)
        if col is None:
            return found
        for k, img in zip(t.column("key").to_pylist(), t.column(col).to_pylist(), strict=True):
            if k in keys and isinstance(img, bytes) and img:
                found[k] = img
        return found
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(base + ".tar")), mode="r:*") as tar:
        for m in tar:  # read into memory only; names never touch the disk
            stem, _, ext = posixpath.basename(m.name).partition(".")
            if m.isfile() and ext.lower() in I2D_IMAGE_EXTS and stem in keys:
                f = tar.extractfile(m)
                if f is not None:
                    found[stem] = f.read()
    return found


# ============================================================== join (materialise)

def join_file(url: str, mode: str, status: dict[str, tuple[str, str, str]], fmt: str,
              out: str, seed: int) -> dict[str, Any]:
    """One curated file + its images -> a trainable file in `out`, and its stats."""
    from worldclip.pipelines import balancing, curate
    from worldclip.pipelines.shards import looks_like_image

    name = _name(url, ".parquet")
    table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    keys = table.column("key").to_pylist()
    wanted: dict[str, set[str]] = defaultdict(set)
    for k in keys:
        s = status.get(k)
        if s and s[2] == "success":
            wanted[s[0]].add(s[1])
    images: dict[tuple[str, str], bytes] = {}
    for base, ks in sorted(wanted.items()):
        for k, img in load_images(base, fmt, ks).items():
            images[(base, k)] = img
    failed: Counter = Counter()
    got: list[bytes | None] = []
    for k in keys:
        s = status.get(k)
        img = images.get((s[0], s[1])) if s and s[2] == "success" else None
        if s is None:
            failed["not_in_output"] += 1
        elif s[2] != "success":
            failed[s[2]] += 1
        elif img is None or not looks_like_image(img):
            failed["image_missing"] += 1
            img = None
        got.append(img)
    ok = np.array([g is not None for g in got], dtype=bool)
    stats: dict[str, Any] = {"shard": name, "pairs": len(keys), "downloaded": int(ok.sum()),
                             "download_failed": int((~ok).sum()), "by_status": dict(failed)}
    if mode == "offline":
        rows = []
        cols = table.to_pylist()
        for r, img in zip(cols, got, strict=True):
            if img is None:
                continue
            meta = json.loads(r["meta"]) if r["meta"] else {}
            meta.update(key=r["key"], url=r["url"], text=r["text"], texts=r["texts"],
                        lang=r["lang"], entry_ids=r["entry_ids"], prob=r["prob"])
            rows.append((r["key"], img, meta))
        # tar name -> pairs: what the training stream's per-file row counts read
        stats["files"] = curate.write_wds(rows, storage.join(out, "shards", f"{name}.tar"))
        stats["kept"] = len(rows)
    else:
        # pairs the training stream would have kept at epoch 0 but cannot (no image)
        _, keep0 = balancing.sample_pairs(keys, table.column("entry_ids").to_pylist(),
                                          table.column("text_probs").to_pylist(), seed, 0)
        stats["kept_epoch0"] = int(keep0.sum())
        stats["kept_epoch0_lost"] = int((keep0 & ~ok).sum())
        idx = table.set_column(table.column_names.index("image"), "image",
                               pa.array(got, pa.binary())).filter(pa.array(ok))
        storage.write_bytes(storage.join(out, "index", f"{name}.parquet"), parquet_bytes(idx))
    storage.write_json(storage.join(out, "stats", f"{name}.json"), stats)
    return stats


def _join_task(batch: dict[str, Any], mode: str, fmt: str, out: str, seed: int
               ) -> dict[str, list]:
    res = []
    for url, st in zip(batch["url"], batch["status"], strict=True):
        status = {k: tuple(v) for k, v in json.loads(str(st)).items()}
        res.append(json.dumps(join_file(str(url), mode, status, fmt, out, seed)))
    return {"stats": res}


def materialise(cfg: DictConfig) -> dict[str, Any]:
    """Join download.images to the curation by key into download.joined_out (Ray Data, one
    task per curated file); returns the joined data card."""
    import ray

    from worldclip.platform.runtime import init_ray

    init_ray(cfg)
    d, c = cfg.download, cfg.curation
    if not d.images:
        raise ConfigError("config download.images='': give img2dataset's --output_folder of "
                          "the download list")
    mode, files = curated_files(c.balanced_out)
    fmt, status = read_download_status(d.images)
    out = d.joined_out
    items = []
    for f in files:
        keys = pq.read_table(io.BytesIO(storage.read_bytes(f)), columns=["key"])
        sub = {k: status[k] for k in keys.column("key").to_pylist() if k in status}
        items.append({"url": f, "status": json.dumps(sub)})
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(_join_task, batch_size=1, num_cpus=1,
                        compute=ray.data.TaskPoolStrategy(
                            size=max(1, min(int(c.concurrency), len(items)))),
                        fn_kwargs={"mode": mode, "fmt": fmt, "out": out, "seed": int(c.seed)})
    stats = [json.loads(r["stats"]) for r in ds.iter_rows()]
    card = joined_datacard(storage.read_json(storage.join(c.balanced_out, "datacard.json")),
                           stats, mode, d.images, fmt)
    storage.write_json(storage.join(out, "datacard.json"), card)
    save_config(cfg, out)
    d_ = card["download"]
    log.info("join: %d of %d listed pairs downloaded, %d kept pairs lost to the web",
             d_["downloaded"], d_["listed_pairs"], d_["kept_lost_to_web"])
    return card


def joined_datacard(card: dict[str, Any], stats: list[dict[str, Any]], mode: str,
                    images: str, fmt: str) -> dict[str, Any]:
    """The curation's data card with the download folded into the accounting.

    Offline: kept pairs whose image never arrived move from kept to dropped
    `download_failed`. Online: the index keeps P > 0 pairs; the epoch-0 kept pairs lost to the
    web move the same way (later epochs redraw from what arrived)."""
    a = card["accounting"]
    pairs = sum(s["pairs"] for s in stats)
    downloaded = sum(s["downloaded"] for s in stats)
    failed = sum(s["download_failed"] for s in stats)
    assert pairs == downloaded + failed
    lost = failed if mode == "offline" else sum(s["kept_epoch0_lost"] for s in stats)
    if mode == "offline" and pairs != a["kept"]:
        raise accounting.AccountingError(
            f"join: {pairs} kept pairs in the curated files but the data card says {a['kept']}; "
            "re-run `worldclip curate` (its output changed)")
    dropped = dict(a["dropped"])
    dropped["download_failed"] = dropped.get("download_failed", 0) + lost
    kept = a["kept"] - lost
    accounting.check_identity(a["pairs_in"], kept, dropped)
    by_status = accounting.merge(s["by_status"] for s in stats)
    out = dict(card)
    out["accounting"] = {"pairs_in": a["pairs_in"], "kept": kept, "dropped": dropped,
                         "identity": f"{a['pairs_in']} = {kept} + {sum(dropped.values())}"}
    out["download"] = {"images": images, "format": fmt, "mode": mode,
                       "listed_pairs": pairs, "downloaded": downloaded,
                       "download_failed": failed, "by_status": dict(by_status),
                       "kept_before_download": a["kept"], "kept_lost_to_web": lost,
                       "lost_share": round(lost / a["kept"], 4) if a["kept"] else 0.0}
    return out


def run_join(cfg: DictConfig) -> dict[str, Any]:
    """`worldclip join`: materialise the trainable dataset from img2dataset's output."""
    t0 = time.time()
    card = materialise(cfg)
    return {"out": cfg.download.joined_out, **card["download"],
            "accounting": card["accounting"], "wall_s": round(time.time() - t0, 2)}


def prepare_train_data(cfg: DictConfig) -> None:
    """Train hook: with download.images set, join first and train on the joined data."""
    if not cfg.download.images:
        return
    materialise(cfg)
    cfg.train.data = cfg.download.joined_out
