"""Text-first curation from Common Crawl: WAT parsing, text-only shards, download lists for
img2dataset, the join of img2dataset's output by key, and the accounting from WAT image links
to trained pairs (docs/curation.md, "Text-first curation from Common Crawl").

WAT fixtures are real WARC/1.0 files written with warcio (gzip per record, as Common Crawl);
the img2dataset output fixture follows img2dataset 1.47's WebDataset layout (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config

from worldclip.pipelines import curate, join, shards, wat, world
from worldclip.pipelines.train import stage as train_stage
from worldclip.platform import storage

PAGE = "http://news.example.org/world/2024/story.html"


def _img(url, **attrs):
    return {"path": "IMG@/src", "url": url, **attrs}


def _metaclip_uuid(url: str) -> str:
    """MetaCLIP's gen_uuid written out independently: sha224 of the URL, 24 hex chars."""
    return hashlib.sha224(url.replace("\t", "").replace(" ", "").encode()).hexdigest()[:24]


def _fixture_records():
    links = [
        _img("/img/dog.jpg", alt="a brown dog"),                        # relative
        _img("https://cdn.example.net/cat.png", title="cat", alt="cat",  # absolute, alt==title
             **{"data-image-title": "Tabby cat"}),
        _img("../thumbs/fox.webp", **{"data-image-title": "red fox"}),  # relative with ..
        _img("/img/spacer.gif"),                                        # no text attribute
        _img("/img/blank.gif", alt="   \n "),                           # whitespace only
        _img("data:image/gif;base64,R0lGODlhAQABAAAAACw=", alt="pixel"),  # not fetchable
        {"path": "IMG@/src", "alt": "no url at all"},                   # missing url
        {"path": "A@/href", "url": "/about.html", "text": "About"},    # non-image links
        {"path": "LINK@/href", "url": "/style.css", "rel": "stylesheet"},
        {"path": "SCRIPT@/src", "url": "/app.js"},
        _img("/img/dog.jpg#top", alt="a brown dog", title="Rex"),       # same image again
        None, "not a link",
    ]
    page2 = "http://blog.example.com/posts/1"
    links2 = [_img("http://news.example.org/img/dog.jpg", alt="Rex the dog"),  # cross-page dup
              _img("pics/owl.jpg", alt="owl at night")]                     # against <base>
    return [
        (PAGE, wat.wat_document(PAGE, links, title="Story")),
        (page2, wat.wat_document(page2, links2, base="http://static.example.com/b/")),
        ("http://x.example/broken", b'{"Envelope": {"Payload-Metadata": '),   # malformed JSON
        ("http://x.example/noenv", {"Container": {}}),                       # no Envelope
        ("http://x.example/req", {"Envelope": {"Payload-Metadata": {         # a request record
            "Actual-Content-Type": "application/http; msgtype=request",
            "HTTP-Request-Metadata": {"Request-Message": {"Method": "GET"}}}}}),
        ("http://x.example/pic.jpg", {"Envelope": {"Payload-Metadata": {     # not HTML
            "HTTP-Response-Metadata": {"Headers": {"Content-Type": "image/jpeg"}}}}}),
        ("http://x.example/nolinks", wat.wat_document("http://x.example/nolinks", [])
         | {"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {
             "HTML-Metadata": {"Head": {"Title": "empty"}}}}}}),
        ("http://x.example/badlinks", {"Envelope": {"Payload-Metadata": {
            "HTTP-Response-Metadata": {"HTML-Metadata": {"Links": "oops"}}}}}),
    ]


def test_wat_fixture_every_image_link_extracted_or_counted(tmp_path):
    url = str(tmp_path / "CC-MAIN-2024-18" / "CC-MAIN-20240412-00000.warc.wat.gz")
    wat.write_wat(_fixture_records(), url)
    raw = storage.read_bytes(url)
    assert raw[:2] == b"\x1f\x8b" and raw.count(b"\x1f\x8b\x08") >= 9  # gzip per record
    with open(url, "rb") as f:
        res = wat.parse_wat(f, url)
    s = res.stats(url, "")
    assert s["snapshot"] == "" and res.rows  # snapshot comes from the path at write time
    assert s["records"] == {"warcinfo": 1, "with_links": 2, "malformed_json": 1,
                            "no_envelope": 1, "not_http_response": 1, "not_html": 1,
                            "no_links": 1, "bad_links": 1}
    assert s["malformed"] == {"malformed_json": 1, "no_envelope": 1, "bad_links": 1}
    # 8 IMG@/src links in page 1 (None and a string are no links at all), 2 in page 2
    assert s["image_links"] == 10
    assert s["link_drops"] == {"bad_url": 2, "no_text": 2, "duplicate_url": 2}
    assert s["written"] == 10 - 6 == len(res.rows)
    rows = {r["url"]: r for r in res.table().to_pylist()}
    dog = "http://news.example.org/img/dog.jpg"
    assert set(rows) == {dog, "https://cdn.example.net/cat.png",
                         "http://news.example.org/world/thumbs/fox.webp",
                         "http://static.example.com/b/pics/owl.jpg"}
    for u, r in rows.items():
        assert r["key"] == _metaclip_uuid(u) and r["snapshot"] == "CC-MAIN-2024-18"
        assert r["wat_file"] == url
    # duplicates merged in file order: first page kept, texts appended and deduplicated
    assert rows[dog]["alt"] == ["a brown dog", "Rex the dog"] and rows[dog]["title"] == ["Rex"]
    assert rows[dog]["occurrences"] == 3 and rows[dog]["page_url"] == PAGE
    cat = rows["https://cdn.example.net/cat.png"]
    assert (cat["alt"], cat["title"], cat["data-image-title"]) == (["cat"], ["cat"],
                                                                  ["Tabby cat"])
    # the shard is a text-only shard: curation parses it, alt == title counted once
    buf = io.BytesIO()
    pq.write_table(res.table(), buf)
    parsed = shards.parse_shard(buf.getvalue(), "CC-MAIN-20240412-00000.parquet")
    assert not parsed.drops and len(parsed.records) == 4
    rec = {r["url"]: r for r in parsed.records}
    assert rec["https://cdn.example.net/cat.png"]["texts"] == ["cat", "Tabby cat"]
    assert rec[dog]["image"] is None and rec[dog]["key"] == _metaclip_uuid(dog)
    assert json.loads(rec[dog]["meta"])["page_url"] == PAGE


def test_truncated_wat_keeps_records_before_the_damage(tmp_path):
    url = str(tmp_path / "t.warc.wat.gz")
    wat.write_wat(_fixture_records()[:2], url)
    data = storage.read_bytes(url)
    with open(url, "rb") as f:
        full = wat.parse_wat(f, url)
    cut = wat.parse_wat(io.BytesIO(data[: len(data) - 40]), url)  # inside the last record
    assert len(full.rows) == 4 and cut.errors and "re-copy" in cut.errors[0]
    assert cut.records["with_links"] == 1 and len(cut.rows) == 3  # page 1's images only
    assert cut.records["truncated_record"] == 1
    assert cut.links["image_links"] == len(cut.rows) + sum(
        cut.links[k] for k in wat.LINK_DROPS)


def test_text_only_shard_recognised_not_corrupt():
    t = pa.table({"key": ["a1", "a2", "a3", "a1"],
                  "url": ["http://e.x/1.jpg", "ftp://e.x/2.jpg", "http://e.x/3.jpg",
                          "http://e.x/4.jpg"],
                  "alt": [["dog"], ["cat"], [], ["owl"]], "title": [["dog"], [], ["  "], []]})
    assert shards.is_text_only(t.column_names)
    assert not shards.is_text_only(["url", "caption", "jpg", "key", "status"])  # img2dataset
    assert not shards.is_text_only(["image", "text"])
    buf = io.BytesIO()
    pq.write_table(t, buf)
    res = shards.parse_shard(buf.getvalue(), "s.parquet")
    assert [r["key"] for r in res.records] == ["a1"] and res.records[0]["texts"] == ["dog"]
    assert res.drops == {"corrupt_record": 2, "no_text": 1}  # bad URL, repeated key; no text


# ============================================================== img2dataset output fixture

def write_img2dataset_webdataset(list_dir: str, out: str, image_of: dict[str, bytes],
                                 failed: set[str], per_shard: int = 200) -> None:
    """img2dataset 1.47 `--output_format webdataset --save_additional_columns '["uid"]'`
    output for our list: NNNNN.tar (successes only: key.jpg/.txt/.json), NNNNN.parquet (every
    row, failures with status failed_to_download) and NNNNN_stats.json; shard ids continue
    over the sorted input files, keys are shard id and position (its compute_key)."""
    oom_sample = math.ceil(math.log10(per_shard))
    schema = pa.schema([("uid", pa.string()), ("caption", pa.string()), ("url", pa.string()),
                        ("key", pa.string()), ("status", pa.string()),
                        ("error_message", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("original_width", pa.int32()),
                        ("original_height", pa.int32()), ("exif", pa.string()),
                        ("sha256", pa.string())])
    shard_id = 0
    for f in storage.glob(storage.join(list_dir, "*.parquet")):
        rows = pq.read_table(f).to_pylist()
        for start in range(0, len(rows), per_shard):
            name = f"{shard_id:05d}"
            metas, tbuf = [], io.BytesIO()
            with tarfile.open(fileobj=tbuf, mode="w") as tar:
                for i, r in enumerate(rows[start: start + per_shard]):
                    key = f"{shard_id * 10 ** oom_sample + i:0{oom_sample + 5}d}"
                    ok = r["url"] not in failed
                    img = image_of[r["url"]]
                    meta = {"uid": r["uid"], "caption": r["caption"], "url": r["url"],
                            "key": key, "status": "success" if ok else "failed_to_download",
                            "error_message": None if ok else "HTTP Error 404: Not Found",
                            "width": 64 if ok else None, "height": 64 if ok else None,
                            "original_width": 64 if ok else None,
                            "original_height": 64 if ok else None,
                            "exif": "{}" if ok else None,
                            "sha256": hashlib.sha256(img).hexdigest() if ok else None}
                    metas.append(meta)
                    if not ok:
                        continue
                    for ext, payload in (("jpg", img), ("txt", r["caption"].encode()),
                                         ("json", json.dumps(meta, indent=4).encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
            storage.write_bytes(storage.join(out, f"{name}.tar"), tbuf.getvalue())
            pbuf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(metas, schema=schema), pbuf)
            storage.write_bytes(storage.join(out, f"{name}.parquet"), pbuf.getvalue())
            n_ok = sum(m["status"] == "success" for m in metas)
            storage.write_json(storage.join(out, f"{name}_stats.json"), {
                "count": len(metas), "successes": n_ok, "failed_to_download": len(metas) - n_ok,
                "failed_to_resize": 0, "duration": 1.0, "start_time": 0.0, "end_time": 1.0,
                "status_dict": {"success": n_ok, "HTTP Error 404: Not Found":
                                len(metas) - n_ok}})
            shard_id += 1


def world_wat_files(cfg, out_dir: str, files: int = 2) -> dict[str, bytes]:
    """The embedded world as Common Crawl WAT files: one page per pair, its image as an
    IMG@/src link (relative or absolute), alt = first text, title = second; plus a non-image
    link per page. Returns absolute image URL -> JPEG bytes (what a server would return)."""
    spec = world.build_spec(cfg.world)
    world.write_metadata(spec, cfg.world.out)
    image_of: dict[str, bytes] = {}
    pages: list[list] = [[] for _ in range(files)]
    for s in range(spec.num_shards):
        for j, rec in enumerate(world.generate_shard(spec, s)):
            page = f"http://127.0.0.1:8000/p/{rec['key']}.html"
            absolute = f"http://127.0.0.1:8000/img/{rec['key']}.jpg"
            src = f"/img/{rec['key']}.jpg" if j % 2 else absolute
            image_of[absolute] = rec["image"]
            attrs = {"alt": rec["texts"][0]} if rec["texts"] else {}
            if len(rec["texts"]) > 1:
                attrs["title"] = rec["texts"][1]
            links = [_img(src, **attrs), {"path": "A@/href", "url": "/index.html"}]
            pages[(s * 7919 + j) % files].append((page, wat.wat_document(page, links)))
    for i, recs in enumerate(pages):
        wat.write_wat(recs, storage.join(out_dir, f"CC-MAIN-20240412-{i:05d}.warc.wat.gz"))
    return image_of


@pytest.mark.slow
def test_wat_to_trained_pairs_accounting_closes(tmp_path, ray_session):
    root = str(tmp_path)
    cfg = make_config(root, "world.pairs=600", "world.pairs_per_shard=300",
                      f"wat.input={root}/cc/*.warc.wat.gz", "wat.snapshot=CC-MAIN-2024-18",
                      f"curation.input={root}/wat/shards/*.parquet", "curation.p=0.3",
                      f"download.images={root}/i2d",
                      "train.preset=tiny", "train.num_workers=1", "train.max_steps=3",
                      "train.batch_size_per_worker=8", "train.epochs=1",
                      "train.warmup_steps=1", "train.tokenizer_vocab=600")
    image_of = world_wat_files(cfg, f"{root}/cc")
    w = wat.run(cfg)
    assert w["files"] == 2 and w["image_links"] == 600 and not w["malformed"]
    assert w["image_links"] == w["written"] + sum(w["link_drops"].values())
    card = curate.run(cfg)
    assert card["pairs_in"] == w["written"]  # every written record is a curation pair
    kept_files = storage.glob(storage.join(cfg.curation.balanced_out, "kept", "*.parquet"))
    assert sum(pq.read_metadata(u).num_rows for u in kept_files) == card["kept"]
    lst = join.run_download_list(cfg)
    assert lst["mode"] == "offline" and lst["urls"] == lst["pairs"] == card["kept"] > 0
    # img2dataset --url_list <dir> --input_format parquet reads the folder's *.parquet
    listed = [r for u in storage.glob(storage.join(cfg.download.list_out, "*.parquet"))
              for r in pq.read_table(u).to_pylist()]
    assert set(listed[0]) == {"url", "caption", "uid"}
    assert all(r["uid"] == _metaclip_uuid(r["url"]) for r in listed)
    failed = {r["url"] for i, r in enumerate(listed) if i % 7 == 3}
    write_img2dataset_webdataset(cfg.download.list_out, cfg.download.images, image_of, failed,
                                 per_shard=40)
    result = train_stage.run(cfg)  # joins download.images by key, then trains on the joined data
    joined = storage.read_json(storage.join(cfg.download.joined_out, "datacard.json"))
    d, a = joined["download"], joined["accounting"]
    assert d["download_failed"] == d["kept_lost_to_web"] == len(failed)
    assert d["by_status"] == {"failed_to_download": len(failed)}
    assert a["kept"] == card["kept"] - len(failed) == d["downloaded"]
    assert a["dropped"]["download_failed"] == len(failed)
    assert a["pairs_in"] == a["kept"] + sum(a["dropped"].values())
    # joined shards hold exactly the downloaded pairs, with our keys and real JPEGs
    n = 0
    for u in storage.glob(storage.join(cfg.download.joined_out, "shards", "*.tar")):
        parsed = shards.parse_wds(storage.read_bytes(u), u)
        assert not parsed.drops
        for r in parsed.records:
            assert json.loads(r["meta"])["url"] not in failed
            assert r["image"][:3] == b"\xff\xd8\xff"
        n += len(parsed.records)
    assert n == a["kept"]
    # from WAT image links to trained pairs, every link is accounted for
    chain = (w["written"] + sum(w["link_drops"].values()))
    assert chain == w["image_links"]
    assert w["written"] == a["kept"] + sum(a["dropped"].values())
    assert result["steps"] == 3 and result["seen_pairs"] == 24 <= a["kept"]
    assert cfg.train.data == cfg.download.joined_out


def test_join_online_index_with_img2dataset_parquet_output(tmp_path):
    """Online: every P > 0 pair is listed; img2dataset's Parquet output format (image in the
    `jpg` column, failed rows kept with a null image); each failure kind counted."""
    jpeg = world.encode_jpeg(world.render_image([1, 2, 3], np.random.default_rng(0), 32))
    keys = [_metaclip_uuid(f"http://e.x/{i}.jpg") for i in range(5)]
    index = pa.Table.from_pydict({
        "key": keys, "image": [None] * 5, "url": [f"http://e.x/{i}.jpg" for i in range(5)],
        "texts": [[f"text {i}"] for i in range(5)], "langs": [["en"]] * 5,
        "entry_ids": [[[i]] for i in range(5)], "text_probs": [[1.0]] * 5, "meta": ["{}"] * 5,
    }, schema=curate.INDEX_SCHEMA)
    bal = tmp_path / "balanced"
    (bal / "index").mkdir(parents=True)
    pq.write_table(index, bal / "index" / "s0.parquet")
    lst = join.build_download_list(str(bal), str(tmp_path / "list"))
    assert lst["mode"] == "online" and lst["urls"] == 5 and lst["duplicate_urls"] == 0
    # img2dataset --output_format parquet: 0 ok, 1 failed, 2 ok but no image bytes,
    # 3 "ok" with bytes that are no image, 4 never attempted (absent from the output)
    rows = [("success", jpeg), ("failed_to_download", None), ("success", None),
            ("success", b"<html>")]
    out = tmp_path / "i2d"
    out.mkdir()
    pq.write_table(pa.table({
        "uid": keys[:4], "caption": ["c"] * 4, "url": [f"http://e.x/{i}.jpg" for i in range(4)],
        "key": [f"{i:09d}" for i in range(4)], "status": [s for s, _ in rows],
        "error_message": [None, "HTTP Error 404", None, None],
        "jpg": pa.array([b for _, b in rows], pa.binary())}), out / "00000.parquet")
    fmt, status = join.read_download_status(str(out))
    assert fmt == "parquet" and len(status) == 4
    stats = join.join_file(str(bal / "index" / "s0.parquet"), "online", status, fmt,
                           str(tmp_path / "joined"), seed=0)
    assert stats["downloaded"] == 1 and stats["download_failed"] == 4
    assert stats["by_status"] == {"failed_to_download": 1, "image_missing": 2,
                                  "not_in_output": 1}
    assert stats["kept_epoch0"] == 5 and stats["kept_epoch0_lost"] == 4  # P = 1: all kept
    joined = pq.read_table(tmp_path / "joined" / "index" / "s0.parquet")
    assert joined.column("key").to_pylist() == keys[:1]
    assert joined.column("image").to_pylist() == [jpeg]
    card = join.joined_datacard(
        {"accounting": {"pairs_in": 7, "kept": 5, "dropped": {"no_match": 2}}}, [stats],
        "online", str(out), fmt)
    assert card["accounting"]["kept"] == 1
    assert card["accounting"]["dropped"] == {"no_match": 2, "download_failed": 4}
    assert card["download"]["lost_share"] == 0.8
    # our key must survive img2dataset: without --save_additional_columns the join refuses
    pq.write_table(pa.table({"url": ["u"], "key": ["000000000"], "status": ["success"]}),
                   out / "00000.parquet")
    with pytest.raises(join.ConfigError, match="save_additional_columns"):
        join.read_download_status(str(out))
