"""benchmarks/genuine_cifar10.py: its statistics against known values, and the check that refuses
JPEG-derived rows that are not the genuine images' copies (tiny synthetic arrays, no data set)."""

from __future__ import annotations

import numpy as np
import pytest

from n2n_gym.benchmarks import genuine_cifar10 as g


def test_binomial_two_sided_p_is_exact() -> None:
    """Hand-computed tails of a fair coin: 2 * P(X <= min(k, n - k)), at most 1."""
    assert g.binomial_two_sided_p(0, 5) == 2 / 32
    assert g.binomial_two_sided_p(5, 5) == 2 / 32
    assert g.binomial_two_sided_p(1, 10) == 2 * 11 / 1024
    assert g.binomial_two_sided_p(9, 10) == 2 * 11 / 1024
    assert g.binomial_two_sided_p(5, 10) == 1.0 and g.binomial_two_sided_p(0, 0) == 1.0
    # large n: exact integers, no overflow or underflow to 0 where the tail is still representable
    assert g.binomial_two_sided_p(0, 1000) == 2 / 2**1000
    from scipy.stats import binomtest

    for k, n in [(57, 83), (31, 63), (12, 40), (100, 180)]:
        assert g.binomial_two_sided_p(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-12)


def test_mcnemar_counts_the_discordant_images() -> None:
    first = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1])
    second = np.array([1, 0, 0, 0, 0, 1, 1, 0, 0, 1])
    m = g.mcnemar_exact(first, second)  # only first: images 1, 2, 3, 8; only second: image 5
    assert (m["first_only"], m["second_only"]) == (4, 1)
    assert m["p"] == 2 * (1 + 5) / 32
    assert g.mcnemar_exact(first, first) == {"first_only": 0, "second_only": 0, "p": 1.0}
    with pytest.raises(ValueError):
        g.mcnemar_exact(first, second[:-1])


def test_paired_bootstrap_known_values() -> None:
    n = 400
    first = np.ones(n, dtype=bool)
    # a constant difference has a zero-width interval at that difference
    second = np.zeros(n, dtype=bool)
    assert g.paired_bootstrap(first, second, reps=500) == {"difference": 1.0, "low": 1.0, "high": 1.0, "reps": 500,
                                                           "seed": 0, "level": 0.95}
    # 120 of 400 images differ by +1: the interval is the normal one, 0.3 +- 1.96 sqrt(0.3 * 0.7 / 400)
    second = np.arange(n) >= 120
    b = g.paired_bootstrap(first, second, reps=10_000, seed=0)
    half = 1.96 * np.sqrt(0.3 * 0.7 / n)
    assert b["difference"] == pytest.approx(0.3)
    assert b["low"] == pytest.approx(0.3 - half, abs=0.006) and b["high"] == pytest.approx(0.3 + half, abs=0.006)
    assert b == g.paired_bootstrap(first, second, reps=10_000, seed=0)  # the seed fixes it
    # paired: two classifiers that agree on all but 2 of 400 images have a narrow interval, although each one's
    # own accuracy (50 %) alone would have a wide one
    a = np.arange(n) % 2 == 0
    c = a.copy()
    c[[0, 2]] = False
    b = g.paired_bootstrap(a, c, reps=2000)
    assert b["difference"] == 2 / n and 0 <= b["low"] <= b["high"] <= 6 / n
    # a per-image difference of the differences (the gap's change between pixel variants)
    d = g.bootstrap_mean(np.array([1.0, -1.0] * 50), reps=2000)
    assert d["difference"] == 0 and -0.25 < d["low"] < 0 < d["high"] < 0.25


def _images(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random uint8 images, their labels, and copies with a few grey levels of error (a JPEG's)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    noise = rng.integers(-6, 7, x.shape)
    return x, rng.integers(0, 10, n), np.clip(x.astype(int) + noise, 0, 255).astype(np.uint8)


def test_correspondence_accepts_copies_with_jpeg_error() -> None:
    x, y, copy = _images()
    c = g.check_correspondence(x, y, copy, y.copy())
    assert c["images"] == 24 and c["nearest_is_own_copy"] and 2 < c["mae_mean"] < 4


@pytest.mark.parametrize("change", ["shuffled", "labels", "identical", "other images", "shape"])
def test_correspondence_refuses_mismatched_images(change: str) -> None:
    x, y, copy = _images()
    y_copy = y.copy()
    if change == "shuffled":  # the same images, two rows of one class swapped (labels equal, pixels not)
        y[7] = y_copy[7] = y[3]
        copy[[3, 7]] = copy[[7, 3]]
    elif change == "labels":
        y_copy[5] = (y_copy[5] + 1) % 10
    elif change == "identical":  # the genuine pixels given twice: not the JPEG-derived copies
        copy = x.copy()
    elif change == "other images":
        copy = _images(seed=1)[0]
    else:
        copy = copy[:-1]
    with pytest.raises(g.CorrespondenceError):
        g.check_correspondence(x, y, copy, y_copy)


def test_correspondence_refuses_a_row_nearer_another_image() -> None:
    """The nearest-copy check alone (the error bounds opened wide): a swapped pair fails it."""
    x, y, copy = _images()
    y[7] = y[3]
    copy[[3, 7]] = copy[[7, 3]]
    with pytest.raises(g.CorrespondenceError, match="2 genuine images .* nearer another"):
        g.check_correspondence(x, y, copy, y.copy(), max_mean_mae=255, max_image_mae=255)


def test_reproduction_check_tolerates_five_hundredths_of_a_point() -> None:
    g.check_reproduced("x", 0.8592, 0.8592000007629395)
    g.check_reproduced("x", 0.8596, 0.8592)
    with pytest.raises(g.ReproductionError):
        g.check_reproduced("x", 0.8598, 0.8592)


def test_compact_puts_number_lists_on_one_line() -> None:
    import json

    d = {"correct": [1, 0, 1], "ci": [-0.5, 1e-05], "name": "a", "nested": {"empty": [], "words": ["x", "y"]}}
    text = g._compact(json.dumps(d, indent=1))
    assert json.loads(text) == d
    assert '"correct": [1, 0, 1]' in text and '"ci": [-0.5, 1e-05]' in text
