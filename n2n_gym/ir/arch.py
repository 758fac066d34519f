"""The architecture IR: one immutable description of a network as a sequence of layers.

This module is the bottom of the package and imports nothing of ours (and not torch).

A network is a tuple of :class:`Layer`. BatchNorm and ReLU are folded into their conv or
linear layer. ``gap`` is adaptive average pooling to a ``kernel`` x ``kernel`` output
(``kernel=1``, the default: global average pooling; torchvision's VGG pools to 7x7). Residual structure is explicit: consecutive layers that share a ``block``
id form one residual block, ``out = relu(body(x) + shortcut(x))``, where the body is the
block's layers with ``role="body"`` applied in order and the shortcut is its one layer
with ``role="shortcut"`` (a 1x1 projection conv) or the identity when it has none.

Counting conventions (exact, checked against the built modules in the tests):

- parameters: conv weights (no bias: a BN follows) + 2 per BN channel, linear weights
  + biases. BN running statistics are buffers, not parameters.
- FLOPs: 2 FLOPs per multiply-accumulate of conv and linear layers, per input image,
  the convention of ``torch.utils.flop_counter.FlopCounterMode``. BN, ReLU, pooling,
  residual additions and biases are not counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

CONV, LINEAR, MAXPOOL, AVGPOOL, GAP = "conv", "linear", "maxpool", "avgpool", "gap"
LAYER_KINDS = (CONV, LINEAR, MAXPOOL, AVGPOOL, GAP)
POOL_KINDS = (MAXPOOL, AVGPOOL, GAP)
BODY, SHORTCUT = "body", "shortcut"
#: How FLOPs are counted, as records and leaderboards name it: 2 FLOPs per multiply-accumulate of
#: conv and linear layers, per input image (torch.utils.flop_counter.FlopCounterMode agrees).
FLOP_CONVENTION = "2 FLOPs/MAC (FlopCounterMode)"
IR_VERSION = 1


class ArchitectureError(ValueError):
    """An architecture that is not well formed (cannot be built)."""


@dataclass(frozen=True)
class Layer:
    """One layer. ``out`` is the number of output channels (conv) or features (linear).

    ``origin`` is the index of the teacher layer this layer descends from (weights are
    inherited from it); a teacher's layers are their own origins.
    """

    kind: str
    out: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    relu: bool = True
    block: int = -1
    role: str = ""
    origin: int = -1

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ArchitectureError(f"unknown layer kind {self.kind!r}; expected one of {LAYER_KINDS}")
        if self.kind in (CONV, LINEAR) and self.out < 1:
            raise ArchitectureError(f"{self.kind} layer needs out >= 1, got {self.out}")
        if self.kernel < 1 or self.stride < 1 or self.padding < 0:
            raise ArchitectureError(
                f"{self.kind} layer needs kernel >= 1, stride >= 1, padding >= 0; got "
                f"{self.kernel}/{self.stride}/{self.padding}"
            )
        if self.kind in (MAXPOOL, AVGPOOL) and self.padding > self.kernel // 2:
            raise ArchitectureError(f"pooling padding {self.padding} exceeds half its kernel {self.kernel}")
        if self.kind == GAP and (self.stride != 1 or self.padding != 0):
            raise ArchitectureError("gap (adaptive average pooling) takes only its output side (kernel)")
        if self.role not in ("", BODY, SHORTCUT):
            raise ArchitectureError(f"unknown role {self.role!r}")
        if (self.block >= 0) != (self.role != ""):
            raise ArchitectureError("a layer has a role exactly when it belongs to a block")

    @property
    def has_weights(self) -> bool:
        return self.kind in (CONV, LINEAR)


@dataclass(frozen=True)
class LayerShape:
    """Derived per-layer facts: input/output channels and spatial sizes."""

    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    in_features: int  # what a linear layer sees after flattening; C*H*W otherwise


@dataclass(frozen=True)
class Architecture:
    """A network: input shape (C, H, W), number of classes and its layers."""

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]
    name: str = field(default="", compare=False)

    # ---- derived structure -------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def blocks(self) -> dict[int, list[int]]:
        """Block id -> indices of its layers, in order."""
        out: dict[int, list[int]] = {}
        for i, layer in enumerate(self.layers):
            if layer.block >= 0:
                out.setdefault(layer.block, []).append(i)
        return out

    def segments(self) -> list[tuple[str, Any]]:
        """The forward plan: ``("layer", i)`` or ``("block", body_indices, shortcut_index|None)``."""
        plan: list[tuple[str, Any]] = []
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            if layer.block < 0:
                plan.append(("layer", i))
                i += 1
                continue
            j = i
            while j < len(self.layers) and self.layers[j].block == layer.block:
                j += 1
            body = [k for k in range(i, j) if self.layers[k].role == BODY]
            shortcut = [k for k in range(i, j) if self.layers[k].role == SHORTCUT]
            plan.append(("block", body, shortcut[0] if shortcut else None))
            i = j
        return plan

    def skip_flags(self) -> list[tuple[bool, bool]]:
        """Per layer (skip_start, skip_end): a residual connection starts at this layer's
        input (first layer of a block) / ends at its output (last body layer)."""
        flags = [(False, False)] * len(self.layers)
        for kind, *rest in self.segments():
            if kind == "block":
                body, shortcut = rest
                flags[body[0]] = (True, flags[body[0]][1])
                flags[body[-1]] = (flags[body[-1]][0], True)
                if shortcut is not None:
                    flags[shortcut] = (True, True)
        return flags

    def shapes(self) -> list[LayerShape]:
        """Infer every layer's input/output shape; raises ArchitectureError if it cannot be built."""
        self.validate_structure()
        shapes: list[LayerShape | None] = [None] * len(self.layers)
        c, h, w = self.input_shape
        for kind, *rest in self.segments():
            if kind == "layer":
                c, h, w = self._infer(rest[0], c, h, w, shapes)
                continue
            body, shortcut = rest
            c_in, h_in, w_in = c, h, w
            for k in body:
                c, h, w = self._infer(k, c, h, w, shapes)
            if shortcut is not None:
                sc = self._infer(shortcut, c_in, h_in, w_in, shapes)
            else:
                sc = (c_in, h_in, w_in)
            if sc != (c, h, w):
                raise ArchitectureError(
                    f"residual block ending at layer {body[-1]}: body gives {(c, h, w)} but the "
                    f"shortcut gives {sc}; widths and strides of a block must agree"
                )
        return shapes  # type: ignore[return-value]

    def _infer(self, i: int, c: int, h: int, w: int, shapes: list) -> tuple[int, int, int]:
        layer = self.layers[i]
        if layer.kind == CONV:
            ho = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            wo = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            out = (layer.out, ho, wo)
        elif layer.kind in (MAXPOOL, AVGPOOL):
            ho = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            wo = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            out = (c, ho, wo)
        elif layer.kind == GAP:  # adaptive: the output side is the layer's kernel
            out = (c, layer.kernel, layer.kernel)
        else:  # linear flattens its input
            out = (layer.out, 1, 1)
        if out[1] < 1 or out[2] < 1:
            raise ArchitectureError(
                f"layer {i} ({layer.kind}) reduces a {h}x{w} feature map to nothing; "
                "too many downsampling layers for this input size"
            )
        shapes[i] = LayerShape(c, out[0], (h, w), (out[1], out[2]), c * h * w)
        return out

    def validate_structure(self) -> None:
        if not self.layers:
            raise ArchitectureError("an architecture needs at least one layer")
        last = self.layers[-1]
        if last.kind != LINEAR or last.out != self.num_classes or last.relu:
            raise ArchitectureError(
                f"the last layer must be a linear layer with {self.num_classes} outputs and no ReLU"
            )
        seen: set[int] = set()
        prev = -2
        for i, layer in enumerate(self.layers):
            if layer.block >= 0 and layer.block != prev:
                if layer.block in seen:
                    raise ArchitectureError(f"block {layer.block} is not contiguous (layer {i})")
                seen.add(layer.block)
            prev = layer.block
        for b, idx in self.blocks().items():
            roles = [self.layers[k].role for k in idx]
            if BODY not in roles:
                raise ArchitectureError(f"block {b} has no body layer")
            if roles.count(SHORTCUT) > 1:
                raise ArchitectureError(f"block {b} has more than one shortcut")
            for k in idx:
                if self.layers[k].kind != CONV:
                    raise ArchitectureError(f"block {b}: only conv layers may sit in a block (layer {k})")
            if self.layers[[k for k in idx if self.layers[k].role == BODY][-1]].relu:
                raise ArchitectureError(f"block {b}: its last body layer applies ReLU after the addition, set relu=False")

    # ---- counting ----------------------------------------------------------------
    def layer_params(self) -> list[int]:
        counts = []
        for layer, s in zip(self.layers, self.shapes()):
            if layer.kind == CONV:
                counts.append(s.in_channels * layer.out * layer.kernel**2 + 2 * layer.out)
            elif layer.kind == LINEAR:
                counts.append(s.in_features * layer.out + layer.out)
            else:
                counts.append(0)
        return counts

    def layer_flops(self) -> list[int]:
        counts = []
        for layer, s in zip(self.layers, self.shapes()):
            if layer.kind == CONV:
                macs = s.in_channels * layer.out * layer.kernel**2 * s.out_hw[0] * s.out_hw[1]
            elif layer.kind == LINEAR:
                macs = s.in_features * layer.out
            else:
                macs = 0
            counts.append(2 * macs)
        return counts

    @property
    def params(self) -> int:
        return sum(self.layer_params())

    @property
    def flops(self) -> int:
        """FLOPs per image, 2 per multiply-accumulate (see module docstring)."""
        return sum(self.layer_flops())

    # ---- identity ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "ir_version": IR_VERSION,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Architecture":
        if data.get("ir_version", IR_VERSION) != IR_VERSION:
            raise ArchitectureError(f"architecture IR version {data.get('ir_version')} is not {IR_VERSION}")
        try:
            layers = tuple(Layer(**layer) for layer in data["layers"])
            arch = cls(
                input_shape=tuple(int(v) for v in data["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(data["num_classes"]),
                layers=layers,
                name=data.get("name", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ArchitectureError(f"not an architecture description: {exc}") from exc
        return arch

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        return cls.from_dict(json.loads(text))

    def canonical_hash(self) -> str:
        """sha256 of the canonical JSON (name excluded; layer origins included, since
        students with the same shape but different origins inherit different weights)."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def table(self) -> str:
        """A text table of the layers (used by the env's ansi render)."""
        shapes = self.shapes()
        skips = self.skip_flags()
        rows = [f"{'#':>3} {'layer':<9} {'k/s/p':<7} {'in->out':<11} {'hw':<7} {'block':<9} {'params':>10}"]
        for i, (layer, s, p) in enumerate(zip(self.layers, shapes, self.layer_params())):
            ksp = f"{layer.kernel}/{layer.stride}/{layer.padding}" if layer.kind != LINEAR else "-"
            blk = f"{layer.block}{'S' if layer.role == SHORTCUT else ''}" if layer.block >= 0 else ""
            if skips[i][0] and layer.role == BODY:
                blk += " <"
            if skips[i][1] and layer.role == BODY:
                blk += " >"
            rows.append(
                f"{i:>3} {layer.kind:<9} {ksp:<7} {f'{s.in_channels}->{s.out_channels}':<11} "
                f"{f'{s.out_hw[0]}x{s.out_hw[1]}':<7} {blk:<9} {p:>10,}"
            )
        rows.append(f"params {self.params:,}  FLOPs {self.flops:,} (2/MAC)")
        return "\n".join(rows)
