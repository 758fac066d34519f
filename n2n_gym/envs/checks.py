"""The env's argument checks: ``gym.make(..., **kwargs)`` and ``reset(options=...)`` fail where
they are given, naming the argument and the fix (``TypeError`` for a wrong type,
``ValueError`` for a value out of range)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from n2n_gym.evaluation.protocols import PROTOCOLS, Protocol
from n2n_gym.ir.arch import Architecture
from n2n_gym.teachers.teacher import Recipe
from n2n_gym.utils.checks import (
    type_name,
    check_bool,
    check_float,
    check_int,
    check_path_like,
)

__all__ = ["check_env_args", "check_reset_options", "RESET_OPTIONS"]

#: The keys ``N2NEnv.reset(options=...)`` understands, with what each means.
RESET_OPTIONS = {"update": "index of the policy update (int >= 0), for the annealed constraint penalty"}


def check_reset_options(options: Any) -> dict:
    """The options of ``N2NEnv.reset``: a dict of :data:`RESET_OPTIONS` keys (a typo such as
    ``"udpate"`` would otherwise silently break the penalty schedule)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"reset options must be a dict, got {type_name(options)} {options!r}")
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        valid = "; ".join(f"{k!r}: {v}" for k, v in RESET_OPTIONS.items())
        raise ValueError(f"unknown reset option(s) {unknown}; valid options: {valid}")
    out = dict(options)
    if out.get("update") is not None:
        out["update"] = check_int("reset option 'update'", out["update"], min=0)
    return out


def check_env_args(*, teacher: Any, dataset: Any, protocol: Any, ratios: Any, start_architecture: Any,
                   teacher_checkpoint: Any, teacher_recipe: Any, penalty_horizon: Any, episodes_per_update: Any,
                   min_width: Any, eval_seed: Any, data_root: Any, device: Any, cache: Any, progress: Any) -> None:
    """Type and range checks of ``N2NEnv``'s arguments that need no data (``gym.make`` stays
    cheap). Choices (stage, penalty, ...) and the constraints are checked where they are parsed."""
    if not isinstance(teacher, str):
        raise TypeError(f"teacher must be a zoo name (str), got {type_name(teacher)} {teacher!r}")
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a name or 'npz:/path/file.npz' (str), got {type_name(dataset)} {dataset!r}")
    if not isinstance(protocol, (str, Protocol)):
        raise TypeError(f"protocol must be a name of {sorted(PROTOCOLS)} or a Protocol (leave it out for the env "
                        f"id's own), got {type_name(protocol)} {protocol!r}")
    if ratios is not None and not isinstance(ratios, str):
        if not isinstance(ratios, Iterable) or isinstance(ratios, Mapping):
            raise TypeError(f"ratios must be 'paper', 'uniform' or a sequence of numbers in (0, 1] with 1.0, "
                            f"got {type_name(ratios)} {ratios!r}")
        for r in ratios:
            check_float("every width ratio of ratios", r, min=0.0, max=1.0, min_open=True)
    if start_architecture is not None and not isinstance(start_architecture, (Architecture, str, os.PathLike)):
        raise TypeError(f"start_architecture must be an Architecture, its JSON or a path to it, "
                        f"got {type_name(start_architecture)}")
    check_path_like("teacher_checkpoint", teacher_checkpoint)
    if teacher_checkpoint is not None and not os.path.isfile(teacher_checkpoint):
        raise FileNotFoundError(f"teacher_checkpoint {str(teacher_checkpoint)!r} is not a file; pass the path of a "
                                f"saved teacher (.pt) or None to train one")
    if teacher_recipe is not None:
        import dataclasses
        import difflib

        if isinstance(teacher_recipe, Mapping):
            fields = [f.name for f in dataclasses.fields(Recipe)]
            for key in teacher_recipe:
                if key not in fields:
                    close = difflib.get_close_matches(str(key), fields, 1)
                    raise TypeError(f"teacher_recipe has no field {key!r}"
                                    + (f" (did you mean {close[0]!r}?)" if close else "")
                                    + f"; its fields: {', '.join(fields)}")
        elif not isinstance(teacher_recipe, Recipe):
            raise TypeError(f"teacher_recipe must be a Recipe or a dict of its fields, got {type_name(teacher_recipe)}")
    check_int("penalty_horizon", penalty_horizon, min=1)
    check_int("episodes_per_update", episodes_per_update, min=1)
    # a width below 1 is no layer at all; min_width=0 with ratio 0.01 used to fail at the last step
    check_int("min_width", min_width, min=1)
    check_int("eval_seed", eval_seed, min=0, max=2**63 - 1)
    check_path_like("data_root", data_root)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (str), got {type_name(device)} {device!r}")
    if device != "auto":
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"device {device!r} is not a torch device ({exc}); use 'auto', 'cpu' or 'cuda'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be True (the shared cache), False (none) or a path, got {type_name(cache)} {cache!r}")
    check_bool("progress", progress)
