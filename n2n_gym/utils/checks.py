"""Argument checks: bad input fails where it is given, naming the problem and the fix.

Small, dependency-free helpers (``check_int``, ``check_float``, ...) used by every layer:
the env, the reward's constraints, the evaluation protocols and the agents' settings, and
argparse value types for the CLI. The checks that need a layer's own types live in that
layer (``n2n_gym.envs.checks``, ``n2n_gym.ir.edits.check_start_architecture``,
``n2n_gym.data.datasets.check_splits``). Every helper raises ``TypeError`` for a value of
the wrong type and ``ValueError`` for a value out of range; both messages name the argument.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

__all__ = ["check_bool", "check_choice", "check_float", "check_int", "check_path_like", "int_at_least", "json_object",
           "positive_float"]



def type_name(value: Any) -> str:
    """The type of ``value`` as error messages name it (``int``, ``str``, ``dict``)."""
    return type(value).__name__


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an ``int`` in ``[min, max]``; bools and strings are refused (a string
    like ``"10"`` would compare wrongly later, far from where it was given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f" (pass {name}={int(value)!r} without quotes)" if isinstance(value, str) and value.strip().lstrip(
            "+-").isdigit() else ""
        raise TypeError(f"{name} must be an int, got {type_name(value)} {value!r}{hint}")
    value = int(value)
    if min is not None and value < min:
        raise ValueError(f"{name} must be >= {min}, got {value}")
    if max is not None and value > max:
        raise ValueError(f"{name} must be <= {max}, got {value}")
    return value


def check_float(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                min_open: bool = False, max_open: bool = False, finite: bool = True) -> float:
    """``value`` as a finite ``float`` in the interval given (``min_open``: excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            try:
                hint = f" (pass {name}={float(value)!r}, a number, not a string)"
            except ValueError:
                pass
        raise TypeError(f"{name} must be a number, got {type_name(value)} {value!r}{hint}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if min is not None and (value <= min if min_open else value < min):
        raise ValueError(f"{name} must be {'>' if min_open else '>='} {min:g}, got {value:g}")
    if max is not None and (value >= max if max_open else value > max):
        raise ValueError(f"{name} must be {'<' if max_open else '<='} {max:g}, got {value:g}")
    return value


def check_bool(name: str, value: Any) -> bool:
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type_name(value)} {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if not isinstance(value, str) and all(isinstance(c, str) for c in choices):
        raise TypeError(f"{name} must be one of {choices}, got {type_name(value)} {value!r}")
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), [str(c) for c in choices], 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{hint}")
    return value


def check_path_like(name: str, value: Any, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike){' or None' if optional else ''}, "
                        f"got {type_name(value)} {value!r}")


# ---- argparse value types: a bad command-line value is argparse's one-line error, no traceback
def json_object(text: str) -> dict:
    """argparse type: a JSON object (``'{"protocol": "tiny"}'``)."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; "
                                         "write a JSON object: keys and strings in double quotes, the whole in "
                                         "single quotes for the shell, e.g. '{\"key\": \"value\", \"n\": 4}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {text!r}")
    return value


def int_at_least(minimum: int):
    """argparse type: an int >= ``minimum``."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value
