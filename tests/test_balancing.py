"""Counting, thresholds, probabilities and sampling of docs/curation.md §4 (hand-computed
expectations and properties)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldclip.pipelines.balancing import (
    count_entries,
    derive_thresholds,
    entry_probabilities,
    key_hash,
    merge_counts,
    pair_probability,
    sample_pairs,
    tail_proportion,
    text_probabilities,
    threshold_for_proportion,
    uniform,
)

# --- counting ------------------------------------------------------------------------------


def test_count_entries_once_per_text() -> None:
    counts = count_entries([[0, 2, 2], [2], [], None, [4, 0, 0, 0]], num_entries=6)
    assert counts.dtype == np.uint64
    assert counts.tolist() == [2, 0, 2, 0, 1, 0]


def test_count_entries_accepts_pyarrow_and_numpy_rows() -> None:
    rows = [[1, 1, 3], None, [3]]
    arrow = pa.array(rows, type=pa.list_(pa.int64()))
    assert count_entries(arrow, 4).tolist() == [0, 1, 0, 2]
    assert count_entries(pa.chunked_array([arrow[:1], arrow[1:]]), 4).tolist() == [0, 1, 0, 2]
    numpy_rows = [np.array([1, 1, 3]), np.array([], dtype=np.int64), np.array([3])]
    assert count_entries(numpy_rows, 4).tolist() == [0, 1, 0, 2]
    assert count_entries([], 3).tolist() == [0, 0, 0]


def test_count_entries_rejects_ids_out_of_range() -> None:
    with pytest.raises(ValueError, match="entry id 5 is out of range for num_entries=5"):
        count_entries([[0, 5]], 5)
    with pytest.raises(ValueError, match="must be >= 0"):
        count_entries([[-1]], 5)


def test_merge_counts_is_uint64_sum() -> None:
    a = np.array([1, 2, 3], dtype=np.uint64)
    b = np.array([2**40, 0, 1], dtype=np.uint64)
    merged = merge_counts(a, b)
    assert merged.dtype == np.uint64
    assert merged.tolist() == [2**40 + 1, 2, 4]
    with pytest.raises(ValueError, match="same metadata list"):
        merge_counts(a, np.zeros(4, dtype=np.uint64))


# --- thresholds ----------------------------------------------------------------------------

COUNTS = np.array([4, 0, 10, 1, 3, 2], dtype=np.uint64)  # sorted: 0 1 2 3 4 10, total 20
# cumulative shares: 0, .05, .15, .30, .50, 1.0


def test_tail_proportion_is_strict() -> None:
    assert tail_proportion(COUNTS, 3) == pytest.approx(3 / 20)  # 1 + 2; 3 itself excluded
    assert tail_proportion(COUNTS, 3.5) == pytest.approx(6 / 20)
    assert tail_proportion(COUNTS, 1) == 0.0
    assert tail_proportion(COUNTS, 11) == 1.0
    assert tail_proportion(np.zeros(3, dtype=np.uint64), 5) == 0.0


@pytest.mark.parametrize(
    ("p", "t"), [(0.06, 1.0), (0.09, 1.0), (0.11, 2.0), (0.2, 2.0), (0.3, 3.0), (0.76, 10.0)]
)
def test_threshold_for_proportion_closest_share(p: float, t: float) -> None:
    assert threshold_for_proportion(COUNTS, p) == t


def test_threshold_for_proportion_zero_total() -> None:
    assert threshold_for_proportion(np.zeros(4, dtype=np.uint64), 0.06) is None
    assert threshold_for_proportion(np.zeros(0, dtype=np.uint64), 0.06) is None


def _langs() -> dict[str, np.ndarray]:
    return {
        "en": COUNTS,
        "ja": np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10], dtype=np.uint64),  # shares .05 ...
        "sw": np.zeros(3, dtype=np.uint64),
    }


def test_derive_from_t_en_english_keeps_t_en_exactly() -> None:
    result = derive_thresholds(_langs(), t_en=3.5)
    assert result.p == pytest.approx(0.3)  # (1 + 2 + 3) / 20
    assert result.t_en == 3.5
    assert result.t_lang["en"] == 3.5  # not snapped to a count
    # ja sorted 1 x10, 10: shares .05, .10, ..., .50, 1.0 -> closest to .3 is 6/20 -> t=1
    assert result.t_lang["ja"] == 1.0
    assert result.zero_count_languages == ["sw"]
    assert "sw" not in result.t_lang
    assert result.mode == "per_language"


def test_derive_from_p() -> None:
    result = derive_thresholds(_langs(), p=0.2)
    assert result.p == 0.2
    assert result.t_en == 2.0
    assert result.t_lang == {"en": 2.0, "ja": 1.0}
    assert result.zero_count_languages == ["sw"]


def test_derive_single_mode_uses_t_en_everywhere() -> None:
    result = derive_thresholds(_langs(), p=0.5, mode="single")
    assert result.t_en == 4.0
    assert result.t_lang == {"en": 4.0, "ja": 4.0}
    result = derive_thresholds({"ja": _langs()["ja"]}, t_en=7, mode="single")
    assert result.t_lang == {"ja": 7.0}
    assert result.p is None


def test_derive_none_mode_is_unbalanced() -> None:
    result = derive_thresholds(_langs(), mode="none")
    assert result.t_lang == {"en": math.inf, "ja": math.inf}
    assert result.zero_count_languages == ["sw"]
    probs = entry_probabilities(COUNTS, result.t_lang["en"])
    assert probs.tolist() == [1.0] * 6


def test_derive_without_english_from_p() -> None:
    result = derive_thresholds({"ja": _langs()["ja"]}, p=0.3)
    assert result.t_en is None
    assert result.t_lang == {"ja": 1.0}


def test_zero_threshold_language_is_reported() -> None:
    # One matched entry among zeros: shares 0, 0, 1 -> t = 0 for p=0.06 (all its pairs drop).
    result = derive_thresholds({"en": COUNTS, "mt": np.array([0, 0, 5])}, p=0.06)
    assert result.t_lang["mt"] == 0.0
    assert result.zero_threshold_languages == ["mt"]


def test_min_t_lang_floors_derived_thresholds_only() -> None:
    # curation.min_t_lang: the small language keeps its rarest entries (t = 1: P = 1/5 for an
    # entry seen 5 times), English keeps t_en exactly, thresholds above the floor are untouched
    counts = {"en": COUNTS, "mt": np.array([0, 0, 5]), "de": COUNTS}
    plain = derive_thresholds(counts, p=0.06)
    floored = derive_thresholds(counts, p=0.06, min_t=1.0)
    assert floored.t_lang["mt"] == 1.0 and floored.zero_threshold_languages == []
    assert floored.t_lang["en"] == plain.t_lang["en"]
    assert floored.t_lang["de"] == max(plain.t_lang["de"], 1.0)
    assert derive_thresholds(counts, t_en=3.0, mode="single", min_t=10.0).t_lang["mt"] == 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a threshold: give t_en"),
        ({"t_en": 3, "p": 0.1}, "got both t_en=3 and p=0.1; give exactly one"),
        ({"t_en": 0}, "t_en=0: must be a positive finite number"),
        ({"t_en": math.inf}, "t_en=inf: must be a positive finite number"),
        ({"p": 0.0}, r"p=0.0: must be in \(0, 1\]"),
        ({"p": 1.5}, r"p=1.5: must be in \(0, 1\]"),
        ({"p": 0.1, "mode": "global"}, "mode='global': must be one of per_language, single, none"),
    ],
)
def test_derive_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        derive_thresholds(_langs(), **kwargs)


def test_derive_t_en_without_english_matches_errors() -> None:
    with pytest.raises(ValueError, match="no 'en' matches .* give p instead"):
        derive_thresholds({"ja": _langs()["ja"], "en": np.zeros(2)}, t_en=5)
    with pytest.raises(ValueError, match="mode='single' with p=0.1: no 'en' matches"):
        derive_thresholds({"ja": _langs()["ja"]}, p=0.1, mode="single")


# --- probabilities -------------------------------------------------------------------------


def test_entry_probabilities() -> None:
    probs = entry_probabilities(np.array([0, 1, 2, 4, 8], dtype=np.uint64), 2)
    assert probs.tolist() == [1.0, 1.0, 1.0, 0.5, 0.25]


def test_pair_probability_hand_computed() -> None:
    probs = np.array([1.0, 1.0, 1.0, 0.5, 0.25])
    assert pair_probability([3, 4], probs) == pytest.approx(1 - 0.5 * 0.75)  # 0.625
    assert pair_probability([3, 3, 4, 4], probs) == pytest.approx(0.625)  # ids are a set
    assert pair_probability([3], probs) == 0.5
    assert pair_probability([1, 3, 4], probs) == 1.0
    assert pair_probability([], probs) == 0.0


def test_text_probabilities_batch() -> None:
    probs = np.array([1.0, 1.0, 1.0, 0.5, 0.25])
    rows = [[3, 4], [], [4, 4], None, [0, 3], [3]]
    out = text_probabilities(rows, probs)
    assert out.tolist() == pytest.approx([0.625, 0.0, 0.25, 0.0, 1.0, 0.5])
    assert out[4] == 1.0
    assert text_probabilities([], probs).tolist() == []
    assert text_probabilities([[], []], probs).tolist() == [0.0, 0.0]


_id_rows = st.lists(st.lists(st.integers(0, 19), max_size=6), min_size=1, max_size=8)
_counts = st.lists(st.integers(0, 10_000), min_size=20, max_size=20)


@settings(max_examples=200, deadline=None)
@given(_id_rows, _counts, st.floats(0.5, 5_000), st.floats(0.5, 5_000))
def test_probability_properties(
    rows: list[list[int]], counts: list[int], t1: float, t2: float
) -> None:
    counts_arr = np.array(counts, dtype=np.uint64)
    lo, hi = sorted((t1, t2))
    p_lo = entry_probabilities(counts_arr, lo)
    p_hi = entry_probabilities(counts_arr, hi)
    batch_lo = text_probabilities(rows, p_lo)
    batch_hi = text_probabilities(rows, p_hi)
    for i, ids in enumerate(rows):
        a, b = pair_probability(ids, p_lo), pair_probability(ids, p_hi)
        assert 0.0 <= a <= 1.0
        assert a <= b  # monotone non-decreasing in t
        assert batch_lo[i] == pytest.approx(a, abs=1e-12)
        assert batch_lo[i] <= batch_hi[i]
        if ids and all(counts[e] <= lo for e in ids):
            assert a == 1.0 and batch_lo[i] == 1.0
        if not ids:
            assert a == 0.0 and batch_lo[i] == 0.0


# --- deterministic randomness and sampling -------------------------------------------------


def test_key_hash_stable_across_processes() -> None:
    here = key_hash(["img-000001", "img-000002", b"raw"])
    assert here.dtype == np.uint64
    assert len(set(here.tolist())) == 3
    code = (
        "from worldclip.pipelines.balancing import key_hash;"
        "print(key_hash(['img-000001', 'img-000002', b'raw']).tolist())"
    )
    env = {"PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == str(here.tolist())


def test_uniform_deterministic_and_varies() -> None:
    hashes = key_hash([f"k{i}" for i in range(2000)])
    u = uniform(7, 0, hashes, 0)
    assert u.dtype == np.float64
    assert ((u >= 0) & (u < 1)).all()
    assert np.array_equal(u, uniform(7, 0, hashes, 0))
    for other in (uniform(7, 1, hashes, 0), uniform(8, 0, hashes, 0), uniform(7, 0, hashes, 1)):
        assert (other != u).mean() > 0.99
    assert abs(u.mean() - 0.5) < 0.03
    # per-key: a key's draw does not depend on the other keys in the batch
    assert np.array_equal(uniform(7, 0, hashes[5:9], 0), u[5:9])


def test_sample_pairs_hand_cases() -> None:
    keys = ["a", "b", "c", "d"]
    text_ids = [[[1], [], [2]], [[], []], [[0]], []]
    probs = [[1.0, 0.0, 1.0], [0.0, 0.0], [0.0], []]
    chosen, keep = sample_pairs(keys, text_ids, probs, seed=0, epoch=0)
    assert chosen.dtype == np.int64 and keep.dtype == bool
    assert chosen[0] in (0, 2) and keep[0]  # never the unmatched text; P=1 always kept
    assert chosen[1] == -1 and not keep[1]
    assert chosen[2] == 0 and not keep[2]  # P=0 never kept
    assert chosen[3] == -1 and not keep[3]


def test_sample_pairs_deterministic_per_epoch() -> None:
    n = 500
    keys = [f"img{i}" for i in range(n)]
    text_ids = [[[1], [2], [3]]] * n
    probs = [[0.5, 0.5, 0.5]] * n
    c0, k0 = sample_pairs(keys, text_ids, probs, seed=3, epoch=0)
    c0b, k0b = sample_pairs(keys, text_ids, probs, seed=3, epoch=0)
    assert np.array_equal(c0, c0b) and np.array_equal(k0, k0b)
    c1, k1 = sample_pairs(keys, text_ids, probs, seed=3, epoch=1)
    assert (c0 != c1).mean() > 0.5 and (k0 != k1).mean() > 0.3
    # the same key in a different batch position / batch draws the same
    c_sub, k_sub = sample_pairs(keys[10:20][::-1], text_ids[:10], probs[:10], seed=3, epoch=0)
    assert np.array_equal(c_sub, c0[10:20][::-1]) and np.array_equal(k_sub, k0[10:20][::-1])
    # precomputed hashes give the same answer
    c_h, k_h = sample_pairs(key_hash(keys), text_ids, probs, seed=3, epoch=0)
    assert np.array_equal(c_h, c0) and np.array_equal(k_h, k0)


def test_sample_pairs_text_draw_is_uniform_over_matched() -> None:
    n = 30_000
    keys = [f"k{i}" for i in range(n)]
    chosen, _keep = sample_pairs(keys, [[[1], [], [2], [3]]] * n, [[1, 0, 1, 1]] * n, 1, 0)
    freq = np.bincount(chosen, minlength=4) / n
    assert freq[1] == 0
    assert np.allclose(freq[[0, 2, 3]], 1 / 3, atol=0.015)  # ~5.5 sigma


def test_sample_pairs_errors() -> None:
    with pytest.raises(ValueError, match="2 keys but 1 entry-id rows"):
        sample_pairs(["a", "b"], [[[1]]], [[1.0]], 0, 0)
    with pytest.raises(ValueError, match="pair 0 has 2 texts but 1 probabilities"):
        sample_pairs(["a"], [[[1], [2]]], [[1.0]], 0, 0)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**32), st.integers(0, 100))
def test_sample_pairs_keep_rate_matches_probability(p: float, seed: int, epoch: int) -> None:
    n = 8_000
    keys = [f"s{i}" for i in range(n)]
    _chosen, keep = sample_pairs(keys, [[[0]]] * n, [[p]] * n, seed, epoch)
    tolerance = 5 * math.sqrt(p * (1 - p) / n) + 1e-9
    assert abs(keep.mean() - p) <= tolerance
