"""The per-layer observation encoding, one row per layer, every value in [0, 1].

Columns (``FEATURES``): the paper's layer encoding x_t = (type, kernel, stride, padding,
outputs, skip start, skip end), with the type one-hot and sizes normalised, plus what a
policy needs: the layer's input width, whether it is a shortcut, whether it may be
removed / shrunk, the decision made so far (decided, removed, kept width ratio), the
current layer, its position, and the stage. Rows past the architecture's length are 0
(``present`` = 0), so one shape fits every architecture up to ``max_layers``.

The env gives this table in one of ``OBSERVATIONS`` (its ``observation`` argument):
``"table"`` as is, ``"flat"`` row-major as one vector, ``"dict"`` the flat vector with the
current layer's action mask (``{"observation", "action_mask"}``, the key names of
PettingZoo and the mask-aware RL libraries).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from n2n_gym.ir.arch import CONV, LAYER_KINDS, SHORTCUT, Architecture
from n2n_gym.ir.edits import layer_rules

STAGES = ("remove", "shrink", "joint")
FEATURES = (
    "present",
    *(f"type_{k}" for k in LAYER_KINDS),
    "kernel", "stride", "padding", "outputs", "inputs",
    "skip_start", "skip_end", "shortcut",
    "removable", "shrinkable",
    "decided", "removed", "ratio",
    "current", "position",
    *(f"stage_{s}" for s in STAGES),
)
OBSERVATIONS = ("table", "flat", "dict")
COLUMN = {name: i for i, name in enumerate(FEATURES)}
NUM_FEATURES = len(FEATURES)
MAX_KERNEL, MAX_STRIDE, MAX_PADDING = 7, 4, 3


def static_features(arch: Architecture, max_layers: int, stage: str, width_scale: int) -> np.ndarray:
    """The columns that do not change during an episode."""
    if len(arch) > max_layers:
        raise ValueError(f"architecture has {len(arch)} layers, more than max_layers={max_layers}")
    obs = np.zeros((max_layers, NUM_FEATURES), dtype=np.float32)
    shapes, skips, rules = arch.shapes(), arch.skip_flags(), layer_rules(arch)
    n = len(arch)
    for i, (layer, shape, skip, rule) in enumerate(zip(arch.layers, shapes, skips, rules)):
        row = obs[i]
        row[COLUMN["present"]] = 1
        row[COLUMN[f"type_{layer.kind}"]] = 1
        row[COLUMN["kernel"]] = min(layer.kernel / MAX_KERNEL, 1)
        row[COLUMN["stride"]] = min(layer.stride / MAX_STRIDE, 1)
        row[COLUMN["padding"]] = min(layer.padding / MAX_PADDING, 1)
        row[COLUMN["outputs"]] = min(shape.out_channels / width_scale, 1)
        row[COLUMN["inputs"]] = min(shape.in_channels / width_scale, 1)
        row[COLUMN["skip_start"]], row[COLUMN["skip_end"]] = skip
        row[COLUMN["shortcut"]] = layer.role == SHORTCUT
        row[COLUMN["removable"]] = rule.removable
        row[COLUMN["shrinkable"]] = rule.shrinkable
        row[COLUMN["position"]] = i / max(n - 1, 1)
        row[COLUMN[f"stage_{stage}"]] = 1
    return obs


def width_scale(arch: Architecture) -> int:
    """The normaliser of widths: the widest layer of the teacher."""
    return max([l.out for l in arch.layers if l.kind in (CONV, "linear")] + [arch.input_shape[0], 1])


def observation_space(mode: str, max_layers: int, num_actions: int) -> spaces.Space:
    """The observation space of ``mode`` (one of ``OBSERVATIONS``) for ``max_layers`` rows."""
    table = spaces.Box(0.0, 1.0, (max_layers, NUM_FEATURES), np.float32)
    if mode == "table":
        return table
    flat = spaces.Box(0.0, 1.0, (max_layers * NUM_FEATURES,), np.float32)
    if mode == "flat":
        return flat
    if mode == "dict":
        # a Box of bool, not MultiBinary (int8): masked distributions (TorchRL's MaskedCategorical,
        # torch's masked_fill_) take bool masks, and TorchRL's GymEnv maps this Box to a bool spec
        return spaces.Dict({"observation": flat, "action_mask": spaces.Box(0, 1, (num_actions,), bool)})
    raise ValueError(f"observation must be one of {list(OBSERVATIONS)}, got {mode!r}")


def encode_observation(table: np.ndarray, mode: str, action_mask: np.ndarray):
    """``table`` (max_layers, F) as an observation of ``mode``; always a copy."""
    if mode == "table":
        return table.copy()
    flat = table.reshape(-1).copy()
    if mode == "flat":
        return flat
    return {"observation": flat, "action_mask": action_mask.astype(bool, copy=True)}
