"""Turn an architecture of the IR into an ``nn.Module``, and copy a teacher's weights into
a student (weight inheritance).

Inheritance: every student layer copies the teacher layer it descends from (its
``origin``). A shrunk layer keeps the output channels of largest L1 norm; channels that a
residual addition ties together are chosen once for the whole tied group (summed L1
norms), so the additions stay aligned. A layer's input channels follow whatever its
producer kept. Where removal gave a layer a producer whose channels are not the ones its
teacher weights were trained on, the overlapping part of the weight is copied and the
rest is zero, so the student starts as close to the teacher as its shape allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from n2n_gym.ir.arch import CONV, GAP, LINEAR, MAXPOOL, Architecture
from n2n_gym.ir.edits import channel_groups, producers


def _make_layer(layer, shape) -> nn.Module:
    if layer.kind == CONV:
        mods = [
            nn.Conv2d(shape.in_channels, layer.out, layer.kernel, layer.stride, layer.padding, bias=False),
            nn.BatchNorm2d(layer.out),
        ]
    elif layer.kind == LINEAR:
        mods = [nn.Flatten(), nn.Linear(shape.in_features, layer.out)]
    elif layer.kind == MAXPOOL:
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    elif layer.kind == GAP:
        return nn.AdaptiveAvgPool2d(layer.kernel)
    else:
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
    if layer.relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class Network(nn.Module):
    """The module of an :class:`Architecture`; ``layers[i]`` is layer ``i`` of the IR."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleList(_make_layer(l, s) for l, s in zip(arch.layers, arch.shapes()))
        self._plan = arch.segments()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, *rest in self._plan:
            if kind == "layer":
                x = self.layers[rest[0]](x)
                continue
            body, shortcut = rest
            identity = x if shortcut is None else self.layers[shortcut](x)
            for k in body:
                x = self.layers[k](x)
            x = torch.relu(x + identity)
        return x


def build(arch: Architecture, device: torch.device | str = "cpu") -> Network:
    """A freshly initialised module for ``arch`` (channels_last on 4-D inputs)."""
    return Network(arch).to(device=device, memory_format=torch.channels_last)


def weight_and_bn(module: nn.Module):
    """(weight-bearing layer, its BatchNorm or None) of one built layer."""
    if isinstance(module, nn.Sequential):
        first = module[1] if isinstance(module[0], nn.Flatten) else module[0]
        bn = module[1] if isinstance(module[1], nn.BatchNorm2d) else None
        return first, bn
    return None, None


@torch.no_grad()
def _l1_norms(teacher: Network, layer_index: int) -> torch.Tensor:
    weight, _ = weight_and_bn(teacher.layers[layer_index])
    return weight.weight.detach().abs().flatten(1).sum(1).float().cpu()


@dataclass(frozen=True)
class LayerCopy:
    """How one weight-bearing student layer takes its weights from a teacher layer.

    ``out_idx``: the teacher's output channels (rows) kept, in order. ``in_idx``: the
    teacher's input columns (for a linear layer, flattened feature indices) or ``None`` when
    the layer's producer changed: then the overlapping ``[:, :n_in]`` block is copied and the
    rest is zero."""

    student_layer: int
    teacher_layer: int
    out_idx: torch.Tensor
    in_idx: torch.Tensor | None


@torch.no_grad()
def inheritance_plan(student_arch: Architecture, teacher: Network) -> list[LayerCopy]:
    """The :class:`LayerCopy` of every conv and linear layer of ``student_arch`` from
    ``teacher`` (channel choice by the teacher's current L1 norms; module docstring)."""
    s_arch, t_arch = student_arch, teacher.arch
    t_groups, t_prod = channel_groups(t_arch), producers(t_arch)
    s_groups, s_prod = channel_groups(s_arch), producers(s_arch)
    s_shapes, t_shapes = s_arch.shapes(), t_arch.shapes()

    # kept channel indices (teacher numbering) per student channel space
    members: dict[int, list[int]] = {}
    for i, g in enumerate(s_groups):
        if g >= 0 and s_arch.layers[i].kind in (CONV, LINEAR):
            members.setdefault(g, []).append(i)
    kept: dict[int, torch.Tensor] = {-2: torch.arange(s_arch.input_shape[0])}
    space_of: dict[int, int] = {-2: -2}  # student space -> teacher space it descends from
    for g, layers in members.items():
        width = s_arch.layers[layers[0]].out
        origins = [s_arch.layers[i].origin for i in layers]
        space_of[g] = t_groups[origins[0]]
        t_width = min(t_arch.layers[o].out for o in origins)
        score = sum(_l1_norms(teacher, o)[:t_width] for o in origins)
        if width >= t_width:
            kept[g] = torch.arange(t_width)
        else:
            kept[g] = torch.topk(score, width).indices.sort().values

    def input_space(arch_groups, prod, i):
        p = prod[i]
        return -2 if p < 0 else arch_groups[p]

    plan = []
    for i, layer in enumerate(s_arch.layers):
        if layer.kind not in (CONV, LINEAR):
            continue
        o = layer.origin
        t_w, _ = weight_and_bn(teacher.layers[o])
        t_out, t_in = t_w.weight.shape[0], t_w.weight.shape[1]
        out_idx = kept[s_groups[i]][: layer.out]
        if out_idx.numel() < layer.out or int(out_idx.max()) >= t_out:
            out_idx = torch.arange(min(layer.out, t_out))
        s_space = input_space(s_groups, s_prod, i)
        in_idx = kept[s_space] if space_of.get(s_space) == input_space(t_groups, t_prod, o) else None
        n_in = s_shapes[i].in_channels if layer.kind == CONV else s_shapes[i].in_features
        if in_idx is not None and layer.kind == LINEAR:
            if s_shapes[i].in_hw == t_shapes[o].in_hw:
                hw = s_shapes[i].in_hw[0] * s_shapes[i].in_hw[1]
                # flattened features are channel-major: feature = c * hw + position
                in_idx = (in_idx[:, None] * hw + torch.arange(hw)[None, :]).flatten()
            else:
                in_idx = None
        if in_idx is not None and (in_idx.numel() != n_in or int(in_idx.max()) >= t_in):
            in_idx = None
        plan.append(LayerCopy(i, o, out_idx, in_idx))
    return plan


@torch.no_grad()
def inherit_weights(student: Network, teacher: Network) -> Network:
    """Copy ``teacher``'s weights into ``student`` (in place; returns it). Layers are matched
    by ``origin``; see the module docstring for channel selection."""
    for c in inheritance_plan(student.arch, teacher):
        s_w, s_bn = weight_and_bn(student.layers[c.student_layer])
        t_w, t_bn = weight_and_bn(teacher.layers[c.teacher_layer])
        _copy_rows(s_w.weight, t_w.weight, c.out_idx, c.in_idx)
        if isinstance(s_w, nn.Linear):
            s_w.bias[: c.out_idx.numel()] = t_w.bias[c.out_idx.to(t_w.bias.device)]
        if s_bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(s_bn, name)[: c.out_idx.numel()] = getattr(t_bn, name)[c.out_idx.to(t_bn.weight.device)]
    return student


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, out_idx, in_idx) -> None:
    src = src[out_idx.to(src.device)]
    if in_idx is not None:
        dst[: src.shape[0]] = src[:, in_idx.to(src.device)]
        return
    n_in = min(dst.shape[1], src.shape[1])
    dst.zero_()
    dst[: src.shape[0], :n_in] = src[:, :n_in]
