"""Argument checks: bad input fails where it is given, naming the problem and the fix.

Small, dependency-free helpers (``check_int``, ``check_float``, ...) used by the env, the
reward's constraints, the evaluation protocols and the agents' settings, plus the checks
that need the IR: a start architecture against its teacher, ``reset(options=...)`` and
the splits of a loaded data set. Every helper raises ``TypeError`` for a value of the
wrong type and ``ValueError`` for a value out of range; both messages name the argument.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Any, Iterable, Mapping

__all__ = ["check_bool", "check_choice", "check_float", "check_int", "check_path_like", "check_reset_options",
           "check_splits", "check_start_architecture", "MIN_RANKING_IMAGES", "RESET_OPTIONS"]

#: A validation/test split smaller than this cannot rank students reliably: one image is
#: then worth >= 1 % of accuracy, more than the gaps between good students (warning only).
MIN_RANKING_IMAGES = 100
#: The keys ``N2NEnv.reset(options=...)`` understands, with what each means.
RESET_OPTIONS = {"update": "index of the policy update (int >= 0), for the annealed constraint penalty"}


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an ``int`` in ``[min, max]``; bools and strings are refused (a string
    like ``"10"`` would compare wrongly later, far from where it was given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f" (pass {name}={int(value)!r} without quotes)" if isinstance(value, str) and value.strip().lstrip(
            "+-").isdigit() else ""
        raise TypeError(f"{name} must be an int, got {_type_name(value)} {value!r}{hint}")
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
        raise TypeError(f"{name} must be a number, got {_type_name(value)} {value!r}{hint}")
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
        raise TypeError(f"{name} must be True or False, got {_type_name(value)} {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if not isinstance(value, str) and all(isinstance(c, str) for c in choices):
        raise TypeError(f"{name} must be one of {choices}, got {_type_name(value)} {value!r}")
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
                        f"got {_type_name(value)} {value!r}")


def check_reset_options(options: Any) -> dict:
    """The options of ``N2NEnv.reset``: a dict of :data:`RESET_OPTIONS` keys (a typo such as
    ``"udpate"`` would otherwise silently break the penalty schedule)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict, got {_type_name(options)} {options!r}")
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        valid = "; ".join(f"{k!r}: {v}" for k, v in RESET_OPTIONS.items())
        raise ValueError(f"unknown reset option(s) {unknown}; valid options: {valid}")
    out = dict(options)
    if out.get("update") is not None:
        out["update"] = check_int("reset option 'update'", out["update"], min=0)
    return out


def check_start_architecture(arch, teacher) -> None:
    """Raise ``ValueError`` unless ``arch`` descends from ``teacher`` layer by layer.

    A student of the env keeps a subset of the teacher's layers, in order, each with its
    origin's kind, role, block, kernel, stride and padding and at most its width; so the
    teacher's weights can be inherited into it. Anything else (e.g. the architecture of
    another teacher) is refused here rather than failing when a student is built.
    """
    if tuple(arch.input_shape) != tuple(teacher.input_shape) or arch.num_classes != teacher.num_classes:
        raise ValueError(f"start_architecture has input shape {tuple(arch.input_shape)} and {arch.num_classes} "
                         f"classes; the teacher {tuple(teacher.input_shape)} and {teacher.num_classes}")
    fix = "use the 'architecture' of an episode's final info of an env with this teacher"
    previous = -1
    for i, layer in enumerate(arch.layers):
        o = layer.origin
        if not isinstance(o, int) or not 0 <= o < len(teacher.layers):
            raise ValueError(f"start_architecture does not descend from the teacher: layer {i}: origin {o!r} is not a layer of the teacher "
                             f"(0..{len(teacher.layers) - 1}); {fix}")
        if o <= previous:
            raise ValueError(f"start_architecture does not descend from the teacher: layer {i}: origin {o} does not follow origin {previous} "
                             f"(layers must keep the teacher's order); {fix}")
        previous = o
        t = teacher.layers[o]
        for field in ("kind", "role", "block", "kernel", "stride", "padding"):
            if getattr(layer, field) != getattr(t, field):
                raise ValueError(f"start_architecture does not descend from the teacher: layer {i}: {field} {getattr(layer, field)!r} differs from "
                                 f"its origin, teacher layer {o} ({getattr(t, field)!r}); {fix}")
        if layer.has_weights and layer.out > t.out:
            raise ValueError(f"start_architecture does not descend from the teacher: layer {i}: width {layer.out} exceeds its origin's "
                             f"(teacher layer {o}: {t.out}); a student is never wider than its teacher")
    if len(arch.layers) == 0 or arch.layers[-1].origin != len(teacher.layers) - 1:
        raise ValueError(f"start_architecture must end with the teacher's classifier (layer {len(teacher.layers) - 1}); "
                         f"{fix}")


def check_splits(data, *, min_ranking: int = MIN_RANKING_IMAGES) -> None:
    """Refuse a data set with an empty split or fewer than two classes in its training
    split; warn (``UserWarning``) about validation/test splits too small to rank students."""
    sizes = {"train": len(data.train_idx), "validation": len(data.val_idx), "test": len(data.x_test)}
    empty = [k for k, n in sizes.items() if n == 0]
    if empty:
        raise ValueError(f"{data.variant}: the {' and '.join(empty)} split(s) are empty (sizes {sizes}); every split "
                         f"needs images: add images (npz: x_train/y_train and x_test/y_test) or lower val_fraction")
    classes = int(data.y_train[data.train_idx].unique().numel())
    if classes < 2:
        raise ValueError(f"{data.variant}: the training split holds {classes} class; a classifier needs at least 2 "
                         f"(a one-class data set makes every accuracy 1 and every reward meaningless)")
    small = {k: n for k, n in sizes.items() if k != "train" and n < min_ranking}
    if small:
        warnings.warn(f"{data.variant}: split(s) {small} hold fewer than {min_ranking} images: one image is worth "
                      f">= 1 % accuracy, too coarse to rank students; use a larger data set", UserWarning,
                      stacklevel=3)


def check_env_args(*, teacher: Any, dataset: Any, protocol: Any, ratios: Any, start_architecture: Any,
                   teacher_checkpoint: Any, teacher_recipe: Any, penalty_horizon: Any, episodes_per_update: Any,
                   min_width: Any, eval_seed: Any, data_root: Any, device: Any, cache: Any, progress: Any) -> None:
    """Type and range checks of ``N2NEnv``'s arguments that need no data (``gym.make`` stays
    cheap). Choices (stage, penalty, ...) and the constraints are checked where they are parsed."""
    from .arch import Architecture
    from .protocols import Protocol

    if not isinstance(teacher, str):
        raise TypeError(f"teacher must be a zoo name (str), got {_type_name(teacher)} {teacher!r}")
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a name or 'npz:/path/file.npz' (str), got {_type_name(dataset)} {dataset!r}")
    if not isinstance(protocol, (str, Protocol)):
        raise TypeError(f"protocol must be 'fast', 'paper', 'tiny' or a Protocol, got {_type_name(protocol)} {protocol!r}")
    if ratios is not None and not isinstance(ratios, str):
        if not isinstance(ratios, Iterable) or isinstance(ratios, Mapping):
            raise TypeError(f"ratios must be 'paper', 'uniform' or a sequence of numbers in (0, 1] with 1.0, "
                            f"got {_type_name(ratios)} {ratios!r}")
        for r in ratios:
            check_float("every width ratio of ratios", r, min=0.0, max=1.0, min_open=True)
    if start_architecture is not None and not isinstance(start_architecture, (Architecture, str, os.PathLike)):
        raise TypeError(f"start_architecture must be an Architecture, its JSON or a path to it, "
                        f"got {_type_name(start_architecture)}")
    check_path_like("teacher_checkpoint", teacher_checkpoint)
    if teacher_checkpoint is not None and not os.path.isfile(teacher_checkpoint):
        raise FileNotFoundError(f"teacher_checkpoint {str(teacher_checkpoint)!r} is not a file; pass the path of a "
                                f"saved teacher (.pt) or None to train one")
    if teacher_recipe is not None:
        import dataclasses
        import difflib

        from .teachers import Recipe

        if isinstance(teacher_recipe, Mapping):
            fields = [f.name for f in dataclasses.fields(Recipe)]
            for key in teacher_recipe:
                if key not in fields:
                    close = difflib.get_close_matches(str(key), fields, 1)
                    raise TypeError(f"teacher_recipe has no field {key!r}"
                                    + (f" (did you mean {close[0]!r}?)" if close else "")
                                    + f"; its fields: {', '.join(fields)}")
        elif not isinstance(teacher_recipe, Recipe):
            raise TypeError(f"teacher_recipe must be a Recipe or a dict of its fields, got {_type_name(teacher_recipe)}")
    check_int("penalty_horizon", penalty_horizon, min=1)
    check_int("episodes_per_update", episodes_per_update, min=1)
    # a width below 1 is no layer at all; min_width=0 with ratio 0.01 used to fail at the last step
    check_int("min_width", min_width, min=1)
    check_int("eval_seed", eval_seed, min=0, max=2**63 - 1)
    check_path_like("data_root", data_root)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (str), got {_type_name(device)} {device!r}")
    if device != "auto":
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"device {device!r} is not a torch device ({exc}); use 'auto', 'cpu' or 'cuda'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be True (the shared cache), False (none) or a path, got {_type_name(cache)} {cache!r}")
    check_bool("progress", progress)


# ---- argparse value types: a bad command-line value is argparse's one-line error, no traceback
def json_object(text: str) -> dict:
    """argparse type: a JSON object (``'{"protocol": "tiny"}'``)."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; "
                                         f"write a JSON object such as '{{\"protocol\": \"tiny\"}}'") from None
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
