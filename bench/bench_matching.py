"""Aho-Corasick matching vs brute force on a 500k-entry vocabulary (docs/curation.md §2).

The paper reports ~2000x over brute force. This builds a deterministic English-like vocabulary
of the MetaCLIP size (wordfreq unigrams + bigrams + title-cased "titles" + synthetic strings),
generates alt-texts, checks that both methods agree on a subset, and prints texts/s and the
ratio measured side by side in this run.

    .venv/bin/python bench/bench_matching.py [--entries 500000] [--texts 50000]
"""

from __future__ import annotations

import argparse
import itertools
import random
import string
import time

from wordfreq import top_n_list

from worldclip.pipelines.matching import Matcher, brute_force_match_padded, pad_entries

PUNCTUATION = [",", ".", "!", ":", ";", "?", " -", "'s"]
TEMPLATES = ["{}", "photo of {}", "{} stock image", "a picture of {}", "{} - wallpaper", "{}."]


def build_vocabulary(num_entries: int, rng: random.Random) -> list[str]:
    """Unigrams, bigrams, titles, numbers and synthetic strings; unique, deterministic order."""
    words = [w for w in top_n_list("en", 320_000) if w.isprintable()]
    seen: set[str] = set()
    vocab: list[str] = []

    def add(entry: str) -> None:
        if entry and entry not in seen and len(vocab) < num_entries:
            seen.add(entry)
            vocab.append(entry)

    for i in range(100):
        add(str(i))
    for w in words[: int(num_entries * 0.5)]:
        add(w)
    common = words[:20_000]
    for _ in range(int(num_entries * 0.2)):
        add(f"{rng.choice(common)} {rng.choice(common)}")
    for _ in range(int(num_entries * 0.12)):
        add(" ".join(rng.choice(common).capitalize() for _ in range(rng.randint(2, 3))))
    letters = string.ascii_lowercase
    while len(vocab) < num_entries:
        add("".join(rng.choice(letters) for _ in range(rng.randint(4, 10))))
    return vocab


def build_texts(num_texts: int, vocab: list[str], rng: random.Random) -> list[str]:
    """Alt-text-like strings: Zipf-ish words, some multi-word entries, punctuation, case."""
    common = [w for w in vocab[100:30_100] if " " not in w]
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(common))))
    phrases = vocab[-int(len(vocab) * 0.5):]
    texts = []
    for _ in range(num_texts):
        parts = rng.choices(common, cum_weights=cum_weights, k=rng.randint(3, 14))
        if rng.random() < 0.4:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(phrases))
        for i in range(len(parts)):
            if rng.random() < 0.12:
                parts[i] += rng.choice(PUNCTUATION)
        text = " ".join(parts)
        if rng.random() < 0.5:
            text = text[:1].upper() + text[1:]
        texts.append(rng.choice(TEMPLATES).format(text))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--texts", type=int, default=50_000, help="texts for Aho-Corasick")
    parser.add_argument("--brute-texts", type=int, default=200, help="subset for brute force")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    start = time.perf_counter()
    vocab = build_vocabulary(args.entries, rng)
    texts = build_texts(args.texts, vocab, rng)
    print(f"vocabulary {len(vocab):,} entries, {len(texts):,} texts "
          f"(generated in {time.perf_counter() - start:.1f}s)")

    start = time.perf_counter()
    matcher = Matcher(vocab)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    padded = pad_entries(vocab)
    pad_s = time.perf_counter() - start

    matcher.match_many(texts[:100])  # warm-up
    start = time.perf_counter()
    ac_rows = matcher.match_many(texts)
    ac_s = time.perf_counter() - start

    subset = texts[: args.brute_texts]
    start = time.perf_counter()
    bf_rows = [sorted(brute_force_match_padded(text, padded)) for text in subset]
    bf_s = time.perf_counter() - start

    mismatches = sum(a != b for a, b in zip(ac_rows, bf_rows, strict=False))
    assert mismatches == 0, f"{mismatches} of {len(subset)} texts differ between methods"
    mean_matches = sum(map(len, ac_rows)) / len(ac_rows)

    ac_rate = len(texts) / ac_s
    bf_rate = len(subset) / bf_s
    print(f"setup: automaton build {build_s:.1f}s, brute-force entry padding {pad_s:.1f}s; "
          f"{mean_matches:.1f} matched entries per text; results identical on "
          f"{len(subset)} texts")
    print()
    print(f"{'method':<16}{'texts':>10}{'seconds':>10}{'texts/s':>12}{'speed-up':>10}")
    print(f"{'brute force':<16}{len(subset):>10,}{bf_s:>10.2f}{bf_rate:>12,.1f}{1:>9.0f}x")
    print(f"{'Aho-Corasick':<16}{len(texts):>10,}{ac_s:>10.2f}{ac_rate:>12,.0f}"
          f"{ac_rate / bf_rate:>9,.0f}x")


if __name__ == "__main__":
    main()
