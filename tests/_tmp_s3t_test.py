import time
def test_x(s3_prefix, ray_session):
    from worldclip.cli import main
    for w in (2, 2, 1):
        t=time.time()
        main(["world", "world.pairs_per_shard=100", "world.eval_per_concept=1",
               "world.distractors=30", "world.concepts=40", f"world.workers={w}", "--out", s3_prefix, "--pairs", "300"])
        print("CLI", w, time.time()-t)
    ray=ray_session
    from worldclip.platform import storage
    t=time.time()
    path, fs = storage.ray_path(storage.join(s3_prefix, "raw", "wds"))
    wds = ray.data.read_webdataset(path, filesystem=fs).take_all()
    print("wds", time.time()-t); t=time.time()
    path, fs = storage.ray_path(storage.join(s3_prefix, "raw", "parquet"))
    rows = ray.data.read_parquet(path, filesystem=fs).take_all()
    print("pq", time.time()-t)
