"""Images downloaded per image trained on: text-first curation vs curating after download.

On the embedded world (docs/curation.md, "Text-first curation from Common Crawl"), side by
side in one run:

  text-first   the world written as Common Crawl WAT files (one page per pair, its image an
               IMG@/src link with alt = first text, title = second) -> `worldclip wat` ->
               `worldclip curate` on the text-only shards -> `download-list`. Images to
               download = the URLs listed (offline: the kept pairs; online: every pair with
               P > 0, any of which a later epoch may draw).
  image-first  today's path: every image of the pool is downloaded (img2dataset over the whole
               pool), then `worldclip curate` runs on the image shards.

Images trained on = pairs the training stream yields: offline the kept pairs; online the pairs
kept by each epoch's redraw (mean over --epochs, and the distinct pairs over all of them).
Both curations must keep the same pairs (same texts, same seed): the bench checks it through
the world key that every image URL carries.

    RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_text_first.py \
        [--pairs 10000] [--files 4] [--epochs 4] [--p 0.06]
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from worldclip.pipelines import balancing, curate, join, wat, world
from worldclip.platform import storage
from worldclip.platform.config import apply_storage, load_config

HOST = "http://127.0.0.1:8000"


def world_as_wat(cfg: Any, out_dir: str, files: int) -> int:
    """The world's pairs as WAT pages (relative and absolute links alternate); bytes written."""
    spec = world.build_spec(cfg.world)
    pages: list[list] = [[] for _ in range(files)]
    for s in range(spec.num_shards):
        for j, rec in enumerate(world.generate_shard(spec, s)):
            page = f"{HOST}/p/{rec['key']}.html"
            src = f"/img/{rec['key']}.jpg" if j % 2 else f"{HOST}/img/{rec['key']}.jpg"
            attrs = {"alt": rec["texts"][0]} if rec["texts"] else {}
            if len(rec["texts"]) > 1:
                attrs["title"] = rec["texts"][1]
            links = [{"path": "IMG@/src", "url": src, **attrs},
                     {"path": "A@/href", "url": "/index.html", "text": "home"}]
            pages[(s * 7919 + j) % files].append((page, wat.wat_document(page, links)))
    total = 0
    for i, recs in enumerate(pages):
        url = storage.join(out_dir, f"CC-MAIN-20240412-{i:05d}.warc.wat.gz")
        wat.write_wat(recs, url)
        total += len(storage.read_bytes(url))
    return total


def world_key(url: str) -> str:
    return posixpath.basename(url)[: -len(".jpg")]


def epoch_kept(files: list[str], seed: int, epochs: int, key_of: Any
               ) -> tuple[list[int], set[str]]:
    """Per-epoch kept pairs of an online index (the training stream's redraw) and the distinct
    pairs kept over all epochs (as world keys)."""
    per_epoch, distinct = [], set()
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(f))) for f in files]
    for e in range(epochs):
        n = 0
        for t in tables:
            keys = t.column("key").to_pylist()
            _, keep = balancing.sample_pairs(keys, t.column("entry_ids").to_pylist(),
                                             t.column("text_probs").to_pylist(), seed, e)
            n += int(keep.sum())
            distinct.update(key_of(t, i) for i in np.flatnonzero(keep))
        per_epoch.append(n)
    return per_epoch, distinct


def kept_world_keys_image_first(out: str) -> set[str]:
    from worldclip.pipelines.shards import parse_wds

    keys = set()
    for u in storage.glob(storage.join(out, "shards", "*.tar")):
        keys.update(r["key"] for r in parse_wds(storage.read_bytes(u), u).records)
    return keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--files", type=int, default=4, help="WAT files (= Ray tasks of `wat`)")
    ap.add_argument("--epochs", type=int, default=4, help="online: epochs redrawn")
    ap.add_argument("--p", type=float, default=0.06)
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows: list[tuple] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as root:
        base = [f"storage.root={root}", f"world.pairs={args.pairs}",
                f"world.pairs_per_shard={-(-args.pairs // 10)}", "world.formats=[wds]",
                "world.eval_per_concept=1", f"curation.p={args.p}", "curation.concurrency=2"]
        cfg = load_config(base)
        apply_storage(cfg)
        world.run(cfg)
        image_bytes = sum(len(storage.read_bytes(u))
                          for u in storage.glob(f"{root}/world/raw/wds/*.tar"))
        wat_bytes = world_as_wat(cfg, f"{root}/cc", args.files)
        t_wat = 0.0
        for mode in ("offline", "online"):
            # image-first: curate the downloaded pool
            ci = load_config([*base, f"curation.mode={mode}",
                              f"curation.out={root}/img-{mode}"])
            t0 = time.time()
            card_i = curate.run(ci)
            t_img = time.time() - t0
            # text-first: wat -> curate text-only shards -> download list
            ct = load_config([*base, f"curation.mode={mode}", f"wat.input={root}/cc/*.wat.gz",
                              f"wat.out={root}/wat", f"curation.input={root}/wat/shards/*",
                              f"curation.out={root}/txt-{mode}",
                              f"download.list_out={root}/list-{mode}"])
            t0 = time.time()
            w = wat.run(ct)  # the second mode finds every file done: count the first's time
            t_wat = t_wat or time.time() - t0
            t0 = time.time()
            card_t = curate.run(ct)
            lst = join.run_download_list(ct)
            t_txt = t_wat + time.time() - t0
            pool = card_i["pairs_in"]
            assert w["image_links"] == pool, (w["image_links"], pool)
            if mode == "offline":
                trained_i, trained_t = float(card_i["kept"]), float(card_t["kept"])
                distinct_i = kept_world_keys_image_first(ci.curation.balanced_out)
                distinct_t = {world_key(r["url"]) for f in join.curated_files(
                    ct.curation.balanced_out)[1] for r in pq.read_table(f).to_pylist()}
            else:
                idx_i = storage.glob(storage.join(ci.curation.balanced_out, "index", "*"))
                idx_t = storage.glob(storage.join(ct.curation.balanced_out, "index", "*"))
                per_i, distinct_i = epoch_kept(idx_i, 0, args.epochs,
                                               lambda t, i: t.column("key")[i].as_py())
                per_t, distinct_t = epoch_kept(idx_t, 0, args.epochs,
                                               lambda t, i: world_key(t.column("url")[i]
                                                                      .as_py()))
                trained_i, trained_t = float(np.mean(per_i)), float(np.mean(per_t))
                # P > 0 does not depend on the coins: both paths must index the same pairs
                p_i = {k for f in idx_i for k in pq.read_table(f).column("key").to_pylist()}
                p_t = {world_key(u) for f in idx_t
                       for u in pq.read_table(f).column("url").to_pylist()}
                notes.append(f"online: pairs with P > 0: image-first {len(p_i)}, text-first "
                             f"{len(p_t)}, differing {len(p_i ^ p_t)}")
            notes.append(f"{mode}: kept image-first {card_i['kept']} / text-first "
                         f"{card_t['kept']} of {pool} (coins are seeded by the pair key, which "
                         "differs: world key vs URL hash)")
            rows.append((mode, "image-first", pool, trained_i, len(distinct_i), t_img,
                         image_bytes))
            rows.append((mode, "text-first", lst["urls"], trained_t, len(distinct_t), t_txt,
                         wat_bytes))
    ray.shutdown()
    print(f"\nembedded world: {args.pairs} pairs, p={args.p}, {args.files} WAT files, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| mode | path | images downloaded | trained per epoch | downloaded / trained | "
          "distinct pairs trained | curation wall s | bytes curated |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for m, path, dl, tr, distinct, secs, nbytes in rows:
        print(f"| {m} | {path} | {dl} | {tr:.1f} | {dl / tr:.2f} | {distinct} | {secs:.1f} | "
              f"{nbytes / 1e6:.1f} MB |")
    for n in notes:
        print(n)

if __name__ == "__main__":
    main()
