"""Graph edits on the IR: which layers may be removed or shrunk, and the student that a
list of per-layer decisions produces.

A decision is ``None`` (remove the layer) or a width ratio ``r`` in (0, 1] (keep it with
``max(floor(n * r), min_width)`` outputs, never more than ``n``). The rules follow the N2N
code, without its defects:

- always kept: the first and last layer, every conv with stride != 1, every linear and
  pooling layer, every residual shortcut;
- a kept layer's input width is whatever now feeds it;
- widths tied by residual additions: the last body layer of a block with an identity
  shortcut takes the block's input width; a projection shortcut takes the width of its
  block's last body layer. So a stage's width changes only at its first producer (the
  stem, or a block with a projection shortcut) and the rest of the stage follows;
- a block whose body layers are all removed disappears when its shortcut is the identity
  (depth reduction); with a projection shortcut that is not allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from n2n_gym.ir.arch import (
    BODY,
    CONV,
    LINEAR,
    SHORTCUT,
    Architecture,
    ArchitectureError,
)

Decision = float | None  # None: remove; r in (0, 1]: keep with width ratio r
MIN_WIDTH = 10  # the N2N code's floor on a shrunk layer's width


class InvalidStudent(ValueError):
    """Decisions that give no buildable student; the message is the reason."""


@dataclass(frozen=True)
class LayerRules:
    """What may be done to one layer of a starting architecture."""

    removable: bool
    shrinkable: bool  # False: its width is fixed or tied to another layer's


def layer_rules(arch: Architecture) -> list[LayerRules]:
    blocks = arch.blocks()
    identity_block_tail: set[int] = set()
    for idx in blocks.values():
        body = [k for k in idx if arch.layers[k].role == BODY]
        if not any(arch.layers[k].role == SHORTCUT for k in idx):
            identity_block_tail.add(body[-1])
    last = len(arch.layers) - 1
    rules = []
    for i, layer in enumerate(arch.layers):
        removable = (
            layer.kind == CONV and layer.stride == 1 and layer.role != SHORTCUT and 0 < i < last
        )
        shrinkable = (
            layer.kind in (CONV, LINEAR)
            and i != last
            and layer.role != SHORTCUT
            and i not in identity_block_tail
        )
        rules.append(LayerRules(removable, shrinkable))
    return rules


def shrunk_width(n: int, ratio: float, min_width: int = MIN_WIDTH) -> int:
    """``min(n, max(floor(n * ratio), min_width, 1))``: never wider than ``n``, never below 1
    (a layer of width 0 does not exist; the env also refuses ``min_width < 1``)."""
    return min(n, max(math.floor(n * ratio + 1e-9), min_width, 1))


def apply_decisions(
    arch: Architecture, decisions: Sequence[Decision], min_width: int = MIN_WIDTH
) -> Architecture:
    """The student that ``decisions`` (one per layer of ``arch``) give.

    Raises :class:`InvalidStudent` (with the reason) when the result cannot be built.
    """
    if len(decisions) != len(arch.layers):
        raise ValueError(f"need one decision per layer: {len(arch.layers)}, got {len(decisions)}")
    rules = layer_rules(arch)
    for i, d in enumerate(decisions):
        if d is None and not rules[i].removable:
            raise InvalidStudent(f"layer {i} ({arch.layers[i].kind}) may not be removed")
        if d is not None and not (0.0 < d <= 1.0):
            raise ValueError(f"layer {i}: width ratio must be in (0, 1], got {d}")

    kept = [d is not None for d in decisions]
    for b, idx in arch.blocks().items():
        body = [k for k in idx if arch.layers[k].role == BODY]
        shortcut = [k for k in idx if arch.layers[k].role == SHORTCUT]
        if not any(kept[k] for k in body):
            if shortcut:
                raise InvalidStudent(f"block {b} would keep its projection shortcut but no body layer")
            for k in idx:
                kept[k] = False

    layers = []
    for i, layer in enumerate(arch.layers):
        if not kept[i]:
            continue
        if layer.kind in (CONV, LINEAR) and i != len(arch.layers) - 1:
            layer = dataclasses.replace(layer, out=shrunk_width(layer.out, decisions[i], min_width))
        layers.append(layer)

    layers = _tie_residual_widths(arch.input_shape[0], layers)
    student = Architecture(arch.input_shape, arch.num_classes, tuple(layers), name=arch.name)
    try:
        student.shapes()
    except ArchitectureError as exc:
        raise InvalidStudent(str(exc)) from exc
    return student


def uniform_width_student(arch: Architecture, target_params: int, min_width: int = MIN_WIDTH,
                          clip: bool = False) -> tuple[Architecture, float]:
    """The student of ``arch`` whose every shrinkable layer keeps ``max(floor(n * r), min_width)``
    outputs, for the largest r (to 1e-6) with at most ``target_params`` parameters; no layer
    removed. Returns (student, r). What uniform magnitude pruning and a hand-designed thin
    network of a given size share. When even the narrowest such student has more than
    ``target_params`` parameters: that narrowest student with ``clip``, else ``ValueError``."""
    shrinkable = [rule.shrinkable for rule in layer_rules(arch)]

    def student(r: float) -> Architecture:
        return apply_decisions(arch, [r if s else 1.0 for s in shrinkable], min_width)

    lo, hi = 1e-6, 1.0
    if student(lo).params > target_params:
        if clip:
            return student(lo), lo
        raise ValueError(f"target {target_params:,} params is below the narrowest uniform student "
                         f"({student(lo).params:,} params, every shrinkable layer at {min_width} channels): "
                         f"raise the target")
    for _ in range(40):  # params is non-decreasing in r
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student(mid).params <= target_params else (lo, mid)
    return student(lo), lo


def _tie_residual_widths(in_channels: int, layers: list) -> list:
    """Make widths agree across residual additions, in one forward pass (see module doc)."""
    layers = list(layers)
    channels = in_channels
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.block < 0:
            if layer.kind in (CONV, LINEAR):
                channels = layer.out
            i += 1
            continue
        j = i
        while j < len(layers) and layers[j].block == layer.block:
            j += 1
        body = [k for k in range(i, j) if layers[k].role == BODY]
        shortcut = [k for k in range(i, j) if layers[k].role == SHORTCUT]
        tail = body[-1]
        # a block whose last body layer was removed: the new tail applies no ReLU itself
        layers[tail] = dataclasses.replace(layers[tail], relu=False)
        if shortcut:
            layers[shortcut[0]] = dataclasses.replace(layers[shortcut[0]], out=layers[tail].out)
        else:
            layers[tail] = dataclasses.replace(layers[tail], out=channels)
        channels = layers[tail].out
        i = j
    return layers


def channel_groups(arch: Architecture) -> list[int]:
    """Per layer, the id of the channel space its output lives in (-1: no channels of its own).

    Outputs added together by a residual connection share one space; the id is the index
    of the space's first producer. Pooling layers pass their input's space through.
    """
    groups = [-1] * len(arch.layers)
    current = -2  # -2: the input image
    for kind, *rest in arch.segments():
        if kind == "layer":
            i = rest[0]
            if arch.layers[i].kind in (CONV, LINEAR):
                current = i
            groups[i] = current
            continue
        body, shortcut = rest
        block_input = current
        for k in body:
            groups[k] = k
        if shortcut is None:
            tail_group = block_input
        else:
            tail_group = body[-1]
            groups[shortcut] = tail_group
        groups[body[-1]] = tail_group
        current = tail_group
    return groups


def producers(arch: Architecture) -> list[int]:
    """Per layer, the layer whose output channels it consumes (-1: the input image)."""
    out = [-1] * len(arch.layers)
    current = -1
    for kind, *rest in arch.segments():
        if kind == "layer":
            i = rest[0]
            out[i] = current
            if arch.layers[i].kind in (CONV, LINEAR):
                current = i
            continue
        body, shortcut = rest
        block_input = current
        for k in body:
            out[k] = current
            current = k
        if shortcut is not None:
            out[shortcut] = block_input
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
