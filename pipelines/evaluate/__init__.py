"""Evaluation: zero-shot classification and image-text retrieval, per language.

Zero-shot is a function of (model, tokenizer, classnames, templates), as in open_clip; retrieval
is XM3600-style (the same images, one caption per image in each language, recall@k both ways).

    templates.py   default prompt templates per language
    metrics.py     zero_shot, retrieval, head_tail_accuracy on embeddings (tie-aware)
    embed.py       text, image and class embeddings with a ClipModel
    evalsets.py    EvalSet and load_eval_set: the Parquet and image-folder layouts
    model.py       load_model from any checkpoint URL (pipelines/checkpoint_io.py)
    scoring.py     score_languages, evaluate_model: every metric per language
    stage.py       `worldclip eval`: run, write_outputs, plot_top1
    suite.py       `eval.suite`: benchmarks (pipelines/benchmarks/) x checkpoints, bootstrap
                   intervals, tables, comparison
    ray_embed.py   evaluate_ray: the image tower on a Ray Data actor pool
"""
