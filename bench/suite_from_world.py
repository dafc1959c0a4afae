"""Write the embedded world's eval set as two real benchmark layouts, for an eval-suite run:
Crossmodal-3600 (captions.jsonl + images/, every language's caption) and CLIP_benchmark
WebDataset zero-shot classification (classnames.txt, templates, test/{0..n-1}.tar with .cls).

    .venv/bin/python bench/suite_from_world.py WORLD_EVAL_DIR OUT_DIR
    worldclip eval "eval.suite=[OUT_DIR/xm3600, OUT_DIR/wds_world]" \
        "eval.checkpoints=[a=RUN/checkpoint_A, b=RUN/checkpoint_B]"
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from eval_fixtures import write_clip_benchmark_wds, write_xm3600  # noqa: E402

from worldclip.pipelines.evaluate.evalsets import load_eval_set  # noqa: E402


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    es = load_eval_set(src)
    langs = sorted(es.captions)
    write_xm3600(os.path.join(out, "xm3600"), es.images,
                 {g: [[c] if c else [] for c in es.captions[g]] for g in langs},
                 keys=[k.replace("/", "_") for k in es.keys])
    write_clip_benchmark_wds(os.path.join(out, "wds_world"), es.images,
                             labels=es.labels.tolist(), classnames=es.classnames["en"],
                             templates=[t.replace("{}", "{c}") for t in es.templates["en"]],
                             per_shard=100)
    print(f"{len(es.keys)} images, {es.num_classes} classes, caption languages {langs} -> {out}")


if __name__ == "__main__":
    main()
