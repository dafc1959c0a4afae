"""Benchmark loaders in the layouts the benchmarks are distributed in (docs/operations.md,
"Eval suites"), used by the eval suite (pipelines/evaluate/suite.py) and by decontamination
(pipelines/dedup/evalsets.py).

    loaders.py   Benchmark, detect_type, normalize_spec, load: Crossmodal-3600,
                 Babel-ImageNet, CLIP_benchmark WebDataset, the embedded eval set, CVQA
    cvqa.py      CVQA as the Hugging Face Hub ships it (afaji/cvqa Parquet)
    images.py    benchmark images by reference (file, tar byte range, Parquet cell), read
                 one batch at a time
"""

from worldclip.pipelines.benchmarks.loaders import (
    TYPES,
    Benchmark,
    detect_type,
    load,
    load_babel_imagenet,
    load_cvqa,
    load_embedded,
    load_images,
    load_wds,
    load_xm3600,
    normalize_spec,
)

__all__ = ["TYPES", "Benchmark", "detect_type", "load", "load_babel_imagenet", "load_cvqa",
           "load_embedded", "load_images", "load_wds", "load_xm3600", "normalize_spec"]
