"""CVQA in the layout the Hugging Face Hub distributes it (docs/operations.md, "Eval suites").

`afaji/cvqa` as downloaded (`huggingface-cli download afaji/cvqa --repo-type dataset`, or the
Hub's parquet-converter copy) is Parquet: <url>/data/test-*.parquet (or
<url>/default/test/*.parquet). Columns, as the dataset card's `dataset_info` declares them
(checked against https://huggingface.co/datasets/afaji/cvqa, README.md, and the authors' own
CLIP scoring in github.com/facebookresearch/MetaCLIP, clipeval/cvqa/eval_cvqa.py):

    image                struct {bytes: binary, path: string}  (HF `Image` feature)
    ID                   string, e.g. "5919991144272485961_0"
    Subset               string naming a language-country pair: "('Japanese', 'Japan')"
    Question             string, in the local language
    Translated Question  string, in English
    Options              list<string>, 4 answers in the local language
    Translated Options   list<string>, the same 4 in English
    Label                int64, index of the right option; -1 where withheld (the public
                         test split withholds it: CVQA scores through its leaderboard)
    Category, Image Type, Image Source, License   strings (not used)

CLIP scoring (MetaCLIP 2's CVQA-LOCAL / CVQA-EN numbers): per question, embed
"<question> <option>" for each option (spec `prompt: option` embeds the option alone), pick the
option nearest the image in cosine similarity; LOCAL uses Question/Options, EN the translated
columns. Rows are grouped by Subset (spec `group_by: language` merges a language's countries).
"""

from __future__ import annotations

import ast
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from worldclip.pipelines.benchmarks.images import ImageRef, ImageRefs
from worldclip.platform import storage
from worldclip.platform.config import ConfigError

log = logging.getLogger(__name__)

# variant -> (question column, options column); LOCAL/EN as the MetaCLIP 2 paper names them
VARIANTS = {"local": ("Question", "Options"), "en": ("Translated Question", "Translated Options")}
COLUMNS = ["image", "ID", "Subset", "Label", *(c for v in VARIANTS.values() for c in v)]
PROMPTS = ("question_option", "option")
GROUP_BY = ("subset", "language")
# where the Hub puts the split: the uploaded files, then the parquet-converter's copy
_PATTERNS = ("data/{split}-*.parquet", "default/{split}/*.parquet", "{split}-*.parquet")


@dataclass
class MultipleChoice:
    """One text variant of a multiple-choice benchmark. Question q is scored on image rows[q]
    against texts[q] (one text per option), labels[q] is the right one, groups[q] the table
    row (language) it counts under."""

    rows: np.ndarray
    texts: list[list[str]]
    labels: np.ndarray
    groups: list[str]


@dataclass
class CvqaData:
    keys: list[str]
    images: Sequence[bytes]
    choices: dict[str, MultipleChoice]
    dropped: dict[str, int] = field(default_factory=dict)


def parquet_files(url: str, split: str = "test") -> list[str]:
    """The split's Parquet files under url, in the first layout that has any."""
    for pattern in _PATTERNS:
        files = storage.glob(storage.join(url, pattern.format(split=split)))
        if files:
            return files
    return []


def looks_like_cvqa(url: str) -> bool:
    """True when url holds a Parquet split whose schema (footer only) has CVQA's columns."""
    files = parquet_files(url)
    if not files:
        return False
    with storage.filesystem(files[0]).open(storage.strip_scheme(files[0]), "rb") as f:
        names = set(pq.ParquetFile(f).schema_arrow.names)
    return {"Subset", "Translated Options", "Label"} <= names


def group_of(subset: str, group_by: str = "subset") -> str:
    """"('Japanese', 'Japan')" -> "Japanese (Japan)" (or "Japanese" by language). The column
    is a Python tuple's repr; anything else is kept as written."""
    try:
        parsed = ast.literal_eval(subset)
    except (ValueError, SyntaxError):
        parsed = None
    if isinstance(parsed, tuple) and len(parsed) == 2 and all(isinstance(p, str) for p in parsed):
        lang, country = (p.strip() for p in parsed)
        return lang if group_by == "language" else f"{lang} ({country})"
    return subset.strip()


def _option_texts(question: str, options: list[str], prompt: str) -> list[str]:
    opts = [str(o).strip() for o in options]
    return opts if prompt == "option" else [f"{question.strip()} {o}" for o in opts]


def _check_spec(spec: dict[str, Any]) -> tuple[str, str]:
    prompt, group_by = str(spec.get("prompt", PROMPTS[0])), str(spec.get("group_by", "subset"))
    if prompt not in PROMPTS:
        raise ConfigError(f"config eval.suite entry {spec['name']!r}: prompt={prompt!r}; must "
                          f"be one of {', '.join(PROMPTS)}")
    if group_by not in GROUP_BY:
        raise ConfigError(f"config eval.suite entry {spec['name']!r}: group_by={group_by!r}; "
                          f"must be one of {', '.join(GROUP_BY)}")
    return prompt, group_by


def _select(available: list[str], wanted: list[str] | None, name: str) -> set[str]:
    """Groups kept by a languages filter: a group's full name ("Japanese (Japan)") or its
    language ("Japanese" keeps every country), case-insensitive."""
    if not wanted:
        return set(available)
    def lang(g: str) -> str:
        return g.split(" (")[0].lower()
    keep = {g for g in available for w in wanted if w.lower() in (g.lower(), lang(g))}
    missing = [w for w in wanted if not any(w.lower() in (g.lower(), lang(g))
                                            for g in available)]
    if missing:
        raise ConfigError(f"benchmark {name!r}: languages {missing} are not in it (it has "
                          f"{available}); drop them from the suite entry's languages")
    return keep


def _drop_reason(r: dict[str, Any], file: str, images_only: bool) -> str | None:
    """Why a question is not scored (None: it is); a label that indexes no option is an error
    (the file is damaged), not a drop."""
    if not (r["image"] or {}).get("bytes"):
        return "no_image"
    if images_only:
        return None
    label, n = r["Label"], len(r["Options"] or [])
    if label is None or int(label) == -1:
        return "no_label"
    if not 0 <= int(label) < n or len(r["Translated Options"] or []) != n:
        raise ValueError(f"cvqa {file}: question {r['ID']!r} has Label={label} but {n} Options "
                         f"/ {len(r['Translated Options'] or [])} Translated Options; Label "
                         f"must index an option (or be -1: withheld)")
    return None


def read_cvqa(spec: dict[str, Any], languages: list[str] | None = None,
              images_only: bool = False) -> CvqaData:
    """Questions of the split with a usable label, both variants; identical images (a photo
    asked about several times) are referenced once (by Parquet cell: the bytes are read here
    one row group at a time to hash them, and again when embedded). Drops are counted by
    reason: no_label (Label -1, withheld), no_image (a null image cell). images_only: every
    image, labelled or not, and no questions (decontamination needs the public split's
    images)."""
    url, name = spec["url"], spec["name"]
    prompt, group_by = _check_spec(spec)
    files = parquet_files(url, str(spec.get("split", "test")))
    if not files:
        raise FileNotFoundError(f"cvqa {url!r}: no data/test-*.parquet (the Hub's afaji/cvqa "
                                f"layout); point url at the downloaded dataset folder")
    dropped: Counter[str] = Counter()
    keys: list[str] = []
    images: list[ImageRef] = []
    index: dict[bytes, int] = {}
    rows: list[int] = []
    labels: list[int] = []
    groups: list[str] = []
    texts: dict[str, list[list[str]]] = {v: [] for v in VARIANTS}
    for file in files:
        with storage.filesystem(file).open(storage.strip_scheme(file), "rb") as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"cvqa {file}: columns {missing} missing (CVQA's Parquet has "
                                 f"{', '.join(COLUMNS)})")
            for g in range(pf.metadata.num_row_groups):
                for i, r in enumerate(pf.read_row_group(g, columns=COLUMNS).to_pylist()):
                    reason = _drop_reason(r, file, images_only)
                    if reason:
                        dropped[reason] += 1
                        continue
                    cell = r["image"]
                    digest = hashlib.sha1(cell["bytes"]).digest()
                    if digest not in index:
                        index[digest] = len(images)
                        keys.append(str(r["ID"]))
                        images.append(ImageRef(file, row_group=g, row=i, column="image"))
                    if images_only:
                        continue
                    rows.append(index[digest])
                    labels.append(int(r["Label"]))
                    groups.append(group_of(str(r["Subset"]), group_by))
                    for v, (q_col, o_col) in VARIANTS.items():
                        texts[v].append(_option_texts(str(r[q_col] or ""), r[o_col], prompt))
    if images_only:
        return CvqaData(keys, ImageRefs(images), {}, dict(dropped))
    if not rows:
        raise ValueError(f"cvqa {url!r}: no question has a label ({dict(dropped)} dropped); "
                         f"the public afaji/cvqa test split withholds them (Label -1), so "
                         f"score a copy with the answers filled in")
    keep_groups = _select(sorted(set(groups)), languages or spec.get("languages"), name)
    keep = [q for q, g in enumerate(groups) if g in keep_groups]
    used = sorted({rows[q] for q in keep})  # only the images the kept questions ask about
    new_row = {old: new for new, old in enumerate(used)}
    if dropped:
        log.warning("cvqa %s: dropped %s", url, dict(dropped))
    choices = {v: MultipleChoice(np.array([new_row[rows[q]] for q in keep], dtype=np.int64),
                                 [texts[v][q] for q in keep],
                                 np.array([labels[q] for q in keep], dtype=np.int64),
                                 [groups[q] for q in keep]) for v in VARIANTS}
    return CvqaData([keys[i] for i in used], ImageRefs([images[i] for i in used]), choices,
                    dict(dropped))
