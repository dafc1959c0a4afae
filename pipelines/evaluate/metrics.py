"""Zero-shot and retrieval metrics on embeddings: plain torch, no model, no I/O.

Ties in scores (a collapsed model gives every class the same score) are broken uniformly at
random in expectation, so a degenerate model scores chance rather than 100%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_QUERY_CHUNK = 2048  # queries scored at once: bounds the [Q, K] score matrix


# ---------------------------------------------------------------------------- metrics

def expected_hits(scores: torch.Tensor, positive: torch.Tensor,
                  ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per query, the probability that a positive lands in the top k under random tie-breaking.

    rank = negatives scoring above the best positive; the negatives tied with it share its
    slot at random, so hit@k = clamp((k - above) / (tied + 1), 0, 1). Exact for one positive;
    positives tied with each other count as one.
    """
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, scores.shape[0], _QUERY_CHUNK):
        s = scores[start:start + _QUERY_CHUNK].float()
        pos = positive[start:start + _QUERY_CHUNK].to(s.device)
        if not bool(pos.any(dim=1).all()):
            raise ValueError("every query needs at least one positive (a label or a caption)")
        best = s.masked_fill(~pos, -math.inf).amax(dim=1, keepdim=True)
        neg = ~pos
        above = ((s > best) & neg).sum(dim=1).float()
        tied = ((s == best) & neg).sum(dim=1).float()
        for k in ks:
            out[k].append(((k - above) / (tied + 1.0)).clamp(0.0, 1.0).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def zero_shot(image_features: torch.Tensor, labels: torch.Tensor | np.ndarray,
              class_emb: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Top-k accuracy of cosine zero-shot classification.

    Returns {"top1": float, "top5": float, ..., "per_class": float array [C]} where per_class
    is the top-1 accuracy of each class (NaN for classes without images). k is capped at C.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_classes = class_emb.shape[0]
    if labels.numel() != image_features.shape[0]:
        raise ValueError(f"zero_shot: {image_features.shape[0]} image features but "
                         f"{labels.numel()} labels; pass one label per image")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"zero_shot: labels must lie in [0, {num_classes}) (one class "
                         f"embedding per class); got [{int(labels.min())}, {int(labels.max())}]")
    scores = image_features.float() @ class_emb.float().to(image_features.device).T
    positive = torch.nn.functional.one_hot(labels, num_classes).bool()
    hits = expected_hits(scores, positive, [min(k, num_classes) for k in ks])
    out: dict[str, Any] = {}
    for k in ks:
        h = hits[min(k, num_classes)]
        out[f"top{k}"] = float(h.double().mean()) if h.numel() else float("nan")
    h1 = hits[1].double()
    totals = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, h1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    per_class = (totals / counts).numpy()  # 0/0 -> NaN: classes without images
    out["per_class"] = per_class
    return out


def retrieval(image_features: torch.Tensor, text_features: torch.Tensor,
              ks: Sequence[int] = (1, 5, 10),
              positives: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@k image->text and text->image.

    Default: one caption per image, pair i <-> i (text_features[i] describes image i).
    positives [N_images, N_texts] bool generalises it (several images sharing one caption
    string, COCO-style several captions per image). Returns {"i2t_r@k", "t2i_r@k"}.
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if positives is None:
        if n_img != n_txt:
            raise ValueError(f"retrieval: {n_img} images but {n_txt} texts; with one caption "
                             f"per image pass equal counts, or a positives matrix")
        positives = torch.eye(n_img, dtype=torch.bool)
    if tuple(positives.shape) != (n_img, n_txt):
        raise ValueError(f"retrieval: positives has shape {tuple(positives.shape)}, expected "
                         f"({n_img}, {n_txt}) = (images, texts)")
    scores = image_features.float() @ text_features.float().to(image_features.device).T
    positives = positives.to(torch.bool)
    i2t = expected_hits(scores, positives, [min(k, n_txt) for k in ks])
    t2i = expected_hits(scores.T, positives.T, [min(k, n_img) for k in ks])
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(i2t[min(k, n_txt)].double().mean())
    for k in ks:
        out[f"t2i_r@{k}"] = float(t2i[min(k, n_img)].double().mean())
    return out


def head_tail_accuracy(per_class: Sequence[float | None], class_counts: Sequence[float],
                       tail_share: float = 0.5) -> dict[str, float]:
    """Mean per-class accuracy of head and tail concepts: the tail is the tail_share least
    frequent classes by class_counts (e.g. training pairs per concept). Classes without
    accuracy (None/NaN) are left out."""
    acc = np.array([np.nan if a is None else a for a in per_class], dtype=np.float64)
    counts = np.asarray(class_counts, dtype=np.float64)
    if acc.shape != counts.shape:
        raise ValueError(f"head_tail_accuracy: {acc.size} per-class accuracies but "
                         f"{counts.size} class counts; pass one count per class")
    if not 0.0 < tail_share < 1.0:
        raise ValueError(f"head_tail_accuracy tail_share={tail_share}: must be in (0, 1)")
    order = np.argsort(counts, kind="stable")  # rarest first
    n_tail = max(1, int(round(tail_share * len(order))))
    tail, head = order[:n_tail], order[n_tail:]
    return {"head": float(np.nanmean(acc[head])) if np.isfinite(acc[head]).any() else math.nan,
            "tail": float(np.nanmean(acc[tail])) if np.isfinite(acc[tail]).any() else math.nan}
