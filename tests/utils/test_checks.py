"""n2n_gym.utils.checks: every helper raises TypeError for the wrong type and ValueError out of
range, both naming the argument; bools and strings are refused as numbers (with the "without
quotes" hint for a quoted number); the argparse types fail with argparse's one-line error."""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
import pytest

from n2n_gym.utils.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_path_like,
    int_at_least,
    json_object,
    positive_float,
)


# ---- every helper: the exception type and the argument's name ------------------------
@pytest.mark.parametrize("call, error", [
    (lambda: check_int("budget", 1.5), TypeError),
    (lambda: check_int("budget", None), TypeError),
    (lambda: check_int("budget", -1, min=0), ValueError),
    (lambda: check_int("budget", 11, max=10), ValueError),
    (lambda: check_float("budget", "x"), TypeError),
    (lambda: check_float("budget", [1.0]), TypeError),
    (lambda: check_float("budget", -0.5, min=0), ValueError),
    (lambda: check_float("budget", 2.0, max=1), ValueError),
    (lambda: check_float("budget", math.nan), ValueError),
    (lambda: check_bool("budget", 1), TypeError),
    (lambda: check_choice("budget", 3, ["a", "b"]), TypeError),
    (lambda: check_choice("budget", "c", ["a", "b"]), ValueError),
    (lambda: check_path_like("budget", 3), TypeError),
], ids=lambda v: getattr(v, "__name__", ""))
def test_every_helper_raises_the_documented_type_naming_the_argument(call, error):
    with pytest.raises(error) as err:
        call()
    assert type(err.value) is error  # not a subclass standing in for the other kind
    assert str(err.value).startswith("budget must be")


# ---- check_int ---------------------------------------------------------------------------
def test_check_int_returns_a_plain_int_in_range():
    assert check_int("n", 5) == 5
    value = check_int("n", np.int64(7), min=7, max=7)  # the bounds are inclusive
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_check_int_refuses_bools(value):
    with pytest.raises(TypeError, match=r"n must be an int, got bool"):
        check_int("n", value)


@pytest.mark.parametrize("text, hint", [("10", "(pass n=10 without quotes)"), (" -3 ", "(pass n=-3 without quotes)"),
                                        ("+4", "(pass n=4 without quotes)")])
def test_check_int_refuses_a_quoted_number_with_the_without_quotes_hint(text, hint):
    with pytest.raises(TypeError) as err:
        check_int("n", text)
    assert str(err.value) == f"n must be an int, got str {text!r} {hint}"


@pytest.mark.parametrize("text", ["ten", "1.5", ""])
def test_check_int_gives_no_hint_for_a_string_that_is_not_an_int(text):
    with pytest.raises(TypeError) as err:
        check_int("n", text)
    assert "without quotes" not in str(err.value) and str(err.value).startswith("n must be an int, got str")


def test_check_int_out_of_range_names_the_bound_and_the_value():
    with pytest.raises(ValueError, match=r"^n must be >= 1, got 0$"):
        check_int("n", 0, min=1)
    with pytest.raises(ValueError, match=r"^n must be <= 3, got 4$"):
        check_int("n", 4, max=3)


# ---- check_float -------------------------------------------------------------------------
def test_check_float_accepts_ints_and_numpy_numbers_as_floats():
    for value in (2, np.float32(0.5), np.int32(3), 1e-3):
        out = check_float("lr", value)
        assert type(out) is float and out == float(value)


def test_check_float_refuses_bools_and_strings():
    with pytest.raises(TypeError, match=r"^lr must be a number, got bool True$"):
        check_float("lr", True)
    with pytest.raises(TypeError) as err:
        check_float("lr", "0.5")
    assert str(err.value) == "lr must be a number, got str '0.5' (pass lr=0.5, a number, not a string)"
    with pytest.raises(TypeError) as err:
        check_float("lr", "fast")
    assert "not a string" not in str(err.value)


def test_check_float_refuses_nan_always_and_inf_unless_allowed():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            check_float("lr", value)
    assert check_float("lr", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match="lr must be a finite number"):
        check_float("lr", math.nan, finite=False)


def test_check_float_open_and_closed_bounds():
    assert check_float("x", 0.0, min=0) == 0.0 and check_float("x", 1.0, max=1) == 1.0
    with pytest.raises(ValueError, match=r"^x must be > 0, got 0$"):
        check_float("x", 0.0, min=0, min_open=True)
    with pytest.raises(ValueError, match=r"^x must be < 1, got 1$"):
        check_float("x", 1.0, max=1, max_open=True)
    with pytest.raises(ValueError, match=r"^x must be >= 0.5, got 0.25$"):
        check_float("x", 0.25, min=0.5)
    with pytest.raises(ValueError, match=r"^x must be <= 0.5, got 0.75$"):
        check_float("x", 0.75, max=0.5)
    assert check_float("x", 0.5, min=0, max=1, min_open=True, max_open=True) == 0.5


# ---- check_bool, check_choice, check_path_like -----------------------------------------------
def test_check_bool_takes_python_and_numpy_bools_only():
    assert check_bool("flag", True) is True and check_bool("flag", np.bool_(False)) is False
    for value in (1, 0, "True", None):
        with pytest.raises(TypeError, match=r"^flag must be True or False, got "):
            check_bool("flag", value)


def test_check_choice_suggests_the_closest_choice():
    assert check_choice("stage", "shrink", ("remove", "shrink")) == "shrink"
    with pytest.raises(ValueError) as err:
        check_choice("stage", "shrnk", ("remove", "shrink"))
    assert str(err.value) == "stage must be one of ['remove', 'shrink'], got 'shrnk' (did you mean 'shrink'?)"
    with pytest.raises(ValueError) as err:
        check_choice("stage", "zzz", ("remove", "shrink"))
    assert "did you mean" not in str(err.value)


def test_check_choice_wrong_type_only_when_every_choice_is_a_string():
    with pytest.raises(TypeError, match=r"^stage must be one of \['remove'\], got int 1$"):
        check_choice("stage", 1, ["remove"])
    assert check_choice("k", 2, [1, 2]) == 2
    with pytest.raises(ValueError, match=r"^k must be one of \[1, 2\], got 3"):
        check_choice("k", 3, [1, 2])
    assert check_choice("k", 2, iter([1, 2])) == 2  # any iterable of choices


def test_check_path_like():
    for value in ("runs", pathlib.Path("runs"), None):
        assert check_path_like("out", value) is None
    with pytest.raises(TypeError, match=r"^out must be a path \(str or os.PathLike\) or None, got int 3$"):
        check_path_like("out", 3)
    with pytest.raises(TypeError, match=r"^out must be a path \(str or os.PathLike\), got NoneType None$"):
        check_path_like("out", None, optional=False)


# ---- argparse value types -------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="n2n-gym-test")
    parser.add_argument("--env-kwargs", type=json_object)
    parser.add_argument("--budget", type=int_at_least(1))
    parser.add_argument("--hours", type=positive_float)
    return parser


def test_argparse_types_parse_good_values():
    ns = _parser().parse_args(["--env-kwargs", '{"protocol": "tiny"}', "--budget", "3", "--hours", "0.5"])
    assert ns.env_kwargs == {"protocol": "tiny"} and ns.budget == 3 and ns.hours == 0.5
    assert int_at_least(1).__name__ == "int >= 1"


@pytest.mark.parametrize("argv, message", [
    (["--env-kwargs", "{protocol: tiny}"], "argument --env-kwargs: not valid JSON"),
    (["--env-kwargs", "[1, 2]"], "argument --env-kwargs: must be a JSON object ({...}), got '[1, 2]'"),
    (["--budget", "0"], "argument --budget: must be >= 1, got 0"),
    (["--budget", "two"], "argument --budget: must be an integer, got 'two'"),
    (["--budget", "1.5"], "argument --budget: must be an integer, got '1.5'"),
    (["--hours", "0"], "argument --hours: must be a finite number > 0, got '0'"),
    (["--hours", "-1"], "argument --hours: must be a finite number > 0, got '-1'"),
    (["--hours", "inf"], "argument --hours: must be a finite number > 0, got 'inf'"),
    (["--hours", "nan"], "argument --hours: must be a finite number > 0, got 'nan'"),
    (["--hours", "soon"], "argument --hours: must be a number, got 'soon'"),
])
def test_argparse_types_fail_with_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    usage, error = err.strip().split("\nn2n-gym-test: error: ")  # the usage, then the error
    assert usage.startswith("usage: n2n-gym-test")
    assert error.startswith(message) and "\n" not in error  # on one line


def test_json_object_error_says_where_and_shows_an_example():
    with pytest.raises(argparse.ArgumentTypeError) as err:
        json_object('{"a": }')
    text = str(err.value)
    assert "at character 6" in text and "\n" not in text
    example = text.rsplit("e.g. ", 1)[1]  # the example is itself what it asks for
    assert example.startswith("'") and example.endswith("'")
    assert isinstance(json.loads(example[1:-1]), dict)
