"""Astigmatic twins of zernike3 (``training.twins``): physics and the report's bookkeeping."""

from __future__ import annotations

import math

import numpy as np

from training.twins import mtf_distance, twin, twin_confusion_r2, twin_report

PAIRS = np.array([[0.2, 0.1], [0.3, 0.2], [0.2, 0.4], [0.1, 0.4], [0.25, 0.25]])


def test_twin_flips_the_weaker_curvature_only() -> None:
    f, c = PAIRS.T
    tf, tc = twin(f, c)
    k = lambda ff, cc, s: 2 * math.sqrt(3) * ff + s * math.sqrt(6) * cc  # noqa: E731
    np.testing.assert_allclose(k(tf, tc, 1), k(f, c, 1))  # |k+| kept
    np.testing.assert_allclose(k(tf, tc, -1), -k(f, c, -1))  # k- flipped
    np.testing.assert_allclose(np.stack(twin(tf, tc)), np.stack([f, c]))  # an involution


def test_twin_psfs_differ_less_than_a_small_focus_step() -> None:
    """0.13-0.32 waves apart in parameters, twins' MTFs differ less than after 0.05 waves."""
    base = np.c_[PAIRS, np.full(len(PAIRS), 0.7)]
    tw = np.c_[np.stack(twin(PAIRS[:, 0], PAIRS[:, 1]), 1), base[:, 2]]
    assert np.all(np.hypot(*(base - tw)[:, :2].T) > 0.12)
    d_twin = mtf_distance(base, tw)
    d_step = mtf_distance(base, base + np.array([0.05, 0.0, 0.0]))
    assert np.all(d_twin < 0.75 * d_step), (d_twin, d_step)
    # ... while a generic point as far away in parameters differs far more
    far = base + np.array([0.0, 0.15, 0.0])
    assert np.all(mtf_distance(base, far) > 1.5 * d_twin)


def test_twin_confusion_bound() -> None:
    b = twin_confusion_r2((0.0, 1.0), (0.0, 0.5), n=100_000)
    # the twin is in range where sqrt(2) f <= 0.5: a share 1 / (2 sqrt(2)) of the prior
    assert abs(b["twin_share"] - 1 / (2 * math.sqrt(2))) < 0.005
    assert 0.95 < b["focus"] < 1.0 and 0.7 < b["cylinder"] < 0.9
    narrow = twin_confusion_r2((0.0, 1.0), (0.2, 0.3), n=100_000)  # one lens: few twins
    assert narrow["twin_share"] < 0.1 and narrow["cylinder"] > b["cylinder"]


def test_twin_report_tells_truth_twin_and_midpoint_apart() -> None:
    rng = np.random.default_rng(0)
    f, c = rng.uniform(0, 0.35, 400), rng.uniform(0, 0.5, 400)
    true = np.c_[f, c, rng.uniform(0, np.pi, 400)]
    tf, tc = twin(f, c)
    exact = twin_report(true, true)
    assert exact["truth"] == 1.0 and exact["sturm_side"] == 1.0 and exact["cylinder"] == 1.0
    swapped = twin_report(np.c_[tf, tc, true[:, 2]], true)
    assert swapped["twin"] == 1.0 and swapped["sturm_side"] < 0.01
    assert swapped["cylinder"] < 0.5 and swapped["cylinder_folded"] > 0.999
    mid = twin_report(np.c_[(f + tf) / 2, (c + tc) / 2, true[:, 2]], true)
    assert mid["midpoint"] == 1.0 and mid["twin_share"] == 1.0
