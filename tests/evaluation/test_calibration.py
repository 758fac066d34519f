"""n2n_gym.evaluation.calibration: the monotone map from a protocol's accuracy to the trained one."""

from __future__ import annotations

import pytest

from n2n_gym.evaluation.calibration import Calibration, leave_one_out


def test_the_fit_is_the_least_squares_line_and_predicts_on_it():
    x = [0.3, 0.4, 0.5, 0.7]
    cal = Calibration.fit(x, [0.7 + 0.2 * v for v in x], chance=0.1)
    assert (cal.intercept, cal.slope, cal.x_min) == (pytest.approx(0.7), pytest.approx(0.2), 0.3)
    assert cal.predict(0.6) == pytest.approx(0.82)
    assert cal.predict(0.95) == pytest.approx(0.89)  # above the fitted range: the line


def test_below_the_fitted_range_it_falls_to_chance_instead_of_extrapolating():
    cal = Calibration(intercept=0.7, slope=0.2, x_min=0.3, chance=0.1)
    assert cal.predict(0.1) == pytest.approx(0.1)  # a student at chance is estimated at chance
    assert cal.predict(0.0) == pytest.approx(0.1)
    assert cal.predict(0.2) == pytest.approx((0.1 + 0.76) / 2)  # halfway between (chance, chance) and (x_min, line)
    xs = [i / 100 for i in range(101)]
    assert all(cal.predict(a) <= cal.predict(b) for a, b in zip(xs, xs[1:]))  # monotone everywhere


def test_the_map_never_decreases_and_stays_in_0_1():
    cal = Calibration.fit([0.2, 0.4, 0.6], [0.9, 0.8, 0.7], chance=0.1)  # anti-correlated: flat, not decreasing
    assert cal.slope == 0.0 and cal.predict(0.5) == pytest.approx(0.8)
    assert Calibration(intercept=0.5, slope=2.0, x_min=0.1, chance=0.1).predict(0.9) == 1.0
    assert Calibration.from_list(cal.to_list()) == cal


def test_leave_one_out_estimates_each_pair_from_the_others():
    x, y = [0.2, 0.35, 0.5, 0.6, 0.8], [0.72, 0.79, 0.80, 0.84, 0.86]
    got = leave_one_out(x, y, 0.1)
    for k in range(len(x)):
        rest = [i for i in range(len(x)) if i != k]
        assert got[k] == Calibration.fit([x[i] for i in rest], [y[i] for i in rest], 0.1).predict(x[k])


@pytest.mark.parametrize("args, error", [
    (([0.1, 0.2], [0.5, 0.6], 0.1), ValueError),  # too few pairs
    (([0.1, 0.2, 0.3], [0.5, 0.6], 0.1), ValueError),  # lengths differ
])
def test_bad_fits_fail_with_the_reason(args, error):
    with pytest.raises(error, match="pairs"):
        Calibration.fit(*args)


def test_bad_maps_fail_where_written():
    with pytest.raises(ValueError, match="slope"):
        Calibration(intercept=0.5, slope=-0.1, x_min=0.2, chance=0.1)
    with pytest.raises(ValueError, match="intercept"):
        Calibration(intercept=float("nan"), slope=0.1, x_min=0.2, chance=0.1)
    with pytest.raises(ValueError, match=r"\[intercept, slope, x_min, chance\]"):
        Calibration.from_list([0.5, 0.1])
