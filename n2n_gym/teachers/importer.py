"""Import a PyTorch ``nn.Module`` as a teacher: its architecture in the IR and its weights.

The module is traced with ``torch.fx`` (``symbolic_trace``'s tracer, recording the
module each operation sits in) and its tensor shapes are propagated with
``torch.fx.passes.shape_prop.ShapeProp`` on an example input. The traced graph is then
read as the IR's sequence of layers:

- ``Conv2d`` (groups=1, dilation 1, square kernel/stride/padding, zero padding) followed
  by an optional ``BatchNorm2d`` and an optional ReLU: one ``conv`` layer. A conv bias is
  folded into the BN's running mean (``BN(Wx + b) = BN'(Wx)`` with ``mean' = mean - b``,
  exact in eval and training mode); a conv without BN gets an identity BN
  (``gamma=1, beta=b, mean=0, var=1-eps``). BN ``eps`` other than 1e-5 is folded into gamma.
- ``MaxPool2d`` / ``AvgPool2d`` (and their functional forms), ``AdaptiveAvgPool2d`` to a
  square output (``gap`` with that side), ``x.mean((2, 3))``.
- ``Linear`` (after ``flatten`` / ``view(N, -1)`` / ``reshape``) with an optional ReLU; a
  linear without bias gets a zero bias.
- ``Dropout`` (identity at eval), ``Identity``.
- a residual addition ``relu(body(x) + shortcut(x))`` where the body is one or more conv
  layers and the shortcut the identity or one conv (+BN) layer (torchvision's ResNets,
  kuangliu/pytorch-cifar's ``BasicBlock`` / ``Bottleneck``).

Everything else (other activations, grouped/depthwise or dilated convs, concatenation,
attention, additions not followed by a ReLU, ...) is refused with
:class:`UnsupportedModelError`, whose message lists every unsupported operation with the
module it sits in. The IR counts parameters of the built network: a conv bias folded into
BN is not counted, an identity BN added to a BN-less conv is (2 per channel);
``ImportedModel.module_params`` is the source module's own count.

The imported network reproduces the module's eval-mode logits (checked on import: max abs
difference <= ``atol``, 1e-5 by default, fp32, in the module's memory format; measured 0
for torchvision's resnet18/resnet50). :meth:`ImportedModel.build` (the env's teacher)
keeps contiguous memory format for that reason: build()'s channels_last only reorders the
conv sums, but that alone moves a random resnet50's logits (magnitude 24, 64x64 inputs)
by 7e-5.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from n2n_gym.ir.arch import (
    BODY,
    CONV,
    GAP,
    LINEAR,
    SHORTCUT,
    Architecture,
    ArchitectureError,
    Layer,
)
from n2n_gym.ir.build import build

BN_EPS = 1e-5  # the eps of the BatchNorm2d that build() makes
SUPPORTED = ("Conv2d (+BatchNorm2d) (+ReLU), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, flatten, Linear (+ReLU), "
             "Dropout, Identity and residual additions followed by a ReLU")


class UnsupportedModelError(ValueError):
    """A module the IR cannot express; ``nodes`` lists the offending operations and where they sit."""

    def __init__(self, message: str, nodes: list[str]):
        super().__init__(message + "".join(f"\n  - {n}" for n in nodes))
        self.nodes = nodes


class ImportMismatchError(RuntimeError):
    """The imported network does not reproduce the module's logits (a defect of the importer)."""


@dataclass(frozen=True)
class ImportedModel:
    """A module in the IR: ``build(architecture)`` loaded with ``state_dict`` reproduces it.

    ``sha256`` digests the architecture and every weight's bytes (the teacher's identity in
    cache keys); ``module_params`` is the source module's parameter count; ``max_abs_diff``
    the largest logit difference measured on import; ``notes`` the foldings applied.
    """

    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    sha256: str
    module_params: int
    max_abs_diff: float
    notes: tuple[str, ...] = ()

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The imported network in eval mode, its parameters frozen, in contiguous memory
        format (not build()'s channels_last), so that its logits equal the module's."""
        net = build(self.architecture, device).to(memory_format=torch.contiguous_format)
        net.load_state_dict(self.state_dict)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net


# ------------------------------------------------------------------------- tracing
class _ScopeTracer(fx.Tracer):
    """``symbolic_trace``'s tracer that also records, per node, the module it was traced in."""

    def __init__(self) -> None:
        super().__init__()
        self._scope: list[str] = []

    def call_module(self, m, forward, args, kwargs):
        self._scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["n2n_scope"] = self._scope[-1] if self._scope else ""
        return node


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    scope = node.meta.get("n2n_scope") or "<top level>"
    if node.op == "call_module":
        return f"module `{node.target}` ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"function {name}() in `{scope}` (node {node.name})"
    if node.op == "call_method":
        return f"method .{node.target}() in `{scope}` (node {node.name})"
    return f"{node.op} {node.target} in `{scope}` (node {node.name})"


# ------------------------------------------------------------------ classification
@dataclass
class _Op:
    kind: str  # conv bn relu maxpool avgpool gap flatten linear identity add aux input output
    module: Any = None
    args: dict = dataclasses.field(default_factory=dict)


def _pair(v, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"non-square {what} {tuple(v)}")
        v = v[0]
    return int(v)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _classify(node: fx.Node, modules: dict[str, nn.Module]) -> _Op | str:
    """The op of ``node``, or the reason it is unsupported."""
    if node.op == "placeholder":
        return _Op("input")
    if node.op == "output":
        return _Op("output")
    if node.op == "get_attr":
        return "a parameter/buffer used directly in the forward pass"
    out_shape, in_node = _shape(node), node.args[0] if node.args else None
    in_shape = _shape(in_node)
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                return f"grouped/depthwise conv (groups={m.groups}); the IR holds only dense convs"
            if _pair(m.dilation, "dilation") != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return "dilated conv, non-zero padding mode or string padding"
            try:
                return _Op("conv", m, {"kernel": _pair(m.kernel_size, "kernel"), "stride": _pair(m.stride, "stride"),
                                       "padding": _pair(m.padding, "padding")})
            except ValueError as exc:
                return f"conv with {exc}"
        if isinstance(m, nn.BatchNorm2d):
            if m.running_mean is None:
                return "batch norm without running statistics (track_running_stats=False)"
            return _Op("bn", m)
        if isinstance(m, nn.ReLU):
            return _Op("relu")
        if isinstance(m, nn.MaxPool2d):
            return _pool_op("maxpool", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override is not None or (not m.count_include_pad and m.padding != 0):
                return "average pooling with divisor_override or count_include_pad=False"
            return _pool_op("avgpool", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode, False)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return _adaptive_op(m.output_size)
        if isinstance(m, nn.Flatten):
            return _flatten_op(in_shape, out_shape)
        if isinstance(m, nn.Linear):
            return _Op("linear", m)
        if isinstance(m, _DROPOUT) or isinstance(m, nn.Identity):
            return _Op("identity")
        return f"{type(m).__name__} is not supported"
    if node.op == "call_function":
        fn = node.target
        if fn in _RELU_FUNCS:
            return _Op("relu")
        if fn in _ADD_FUNCS:
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            if len(tensors) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                return "addition that is not of two tensors"
            return _Op("add")
        if fn is F.max_pool2d:
            return _pool_op("maxpool", _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0),
                            _arg(node, 4, "dilation", 1), _arg(node, 5, "ceil_mode", False),
                            _arg(node, 6, "return_indices", False))
        if fn is F.avg_pool2d:
            if _arg(node, 6, "divisor_override") is not None or (
                    not _arg(node, 5, "count_include_pad", True) and _arg(node, 3, "padding", 0)):
                return "average pooling with divisor_override or count_include_pad=False"
            return _pool_op("avgpool", _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0),
                            1, _arg(node, 4, "ceil_mode", False), False)
        if fn is F.adaptive_avg_pool2d:
            return _adaptive_op(_arg(node, 1, "output_size"))
        if fn is F.dropout or fn is F.dropout2d:
            return _Op("identity")
        if fn is torch.flatten:
            return _flatten_op(in_shape, out_shape)
        if fn is torch.mean:
            return _mean_op(node, in_shape, out_shape)
        if fn is operator.getitem and out_shape is None and _is_aux(in_node):
            return _Op("aux")
        if fn is getattr and node.args[1] == "shape":
            return _Op("aux")
        return f"{getattr(fn, '__name__', fn)} is not supported"
    if node.op == "call_method":
        name = node.target
        if name in ("relu", "relu_"):
            return _Op("relu")
        if name in ("add", "add_"):
            if len(node.args) != 2 or not isinstance(node.args[1], fx.Node) or node.kwargs.get("alpha", 1) != 1:
                return "addition that is not of two tensors"
            return _Op("add")
        if name in ("view", "reshape", "flatten"):
            return _flatten_op(in_shape, out_shape)
        if name == "size" or name == "dim":
            return _Op("aux")
        if name == "mean":
            return _mean_op(node, in_shape, out_shape)
        if name in ("contiguous",):
            return _Op("identity")
        return f"tensor method .{name}() is not supported"
    return f"{node.op} is not supported"


def _is_aux(node) -> bool:
    return isinstance(node, fx.Node) and node.meta.get("n2n_op") is not None and node.meta["n2n_op"].kind == "aux"


def _pool_op(kind, kernel, stride, padding, dilation, ceil_mode, return_indices) -> _Op | str:
    try:
        k = _pair(kernel, "pooling kernel")
        s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride, "stride")
        p, d = _pair(padding, "padding"), _pair(dilation, "dilation")
    except ValueError as exc:
        return f"pooling with {exc}"
    if d != 1 or ceil_mode or return_indices:
        return "pooling with dilation, ceil_mode=True or return_indices=True"
    if p > k // 2:
        return f"pooling padding {p} larger than half its kernel {k}"
    return _Op(kind, args={"kernel": k, "stride": s, "padding": p})


def _adaptive_op(size) -> _Op | str:
    if isinstance(size, (tuple, list)):
        if None in size or len(set(size)) != 1:
            return f"adaptive average pooling to a non-square or partial size {tuple(size)}"
        size = size[0]
    if size is None:
        return "adaptive average pooling with a free output size"
    return _Op("gap", args={"kernel": int(size)})


def _flatten_op(in_shape, out_shape) -> _Op | str:
    if in_shape is None or out_shape is None:
        return "reshape of a value whose shape is unknown"
    if in_shape == out_shape:
        return _Op("identity")
    if len(out_shape) == 2 and out_shape[0] == in_shape[0] and out_shape[1] == math.prod(in_shape[1:]):
        return _Op("flatten")
    return f"reshape from {in_shape} to {out_shape} (only flattening to (N, features) is supported)"


def _mean_op(node: fx.Node, in_shape, out_shape) -> _Op | str:
    dims = _arg(node, 1, "dim")
    dims = {d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])} if dims is not None else None
    if in_shape is not None and len(in_shape) == 4 and dims == {2, 3}:
        if _arg(node, 2, "keepdim", False):
            return _Op("gap", args={"kernel": 1})
        return _Op("gap", args={"kernel": 1, "flatten": True})
    return "mean over other dimensions than the spatial ones (2, 3)"


# ----------------------------------------------------------------------- parsing
@dataclass
class _Group:
    """One IR layer and the modules it came from."""

    layer: Layer
    conv: nn.Module | None = None
    bn: nn.Module | None = None
    linear: nn.Module | None = None
    node: fx.Node | None = None


class _Parser:
    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module]):
        self.modules = modules
        self.nodes = [n for n in graph.nodes if n.meta["n2n_op"].kind != "aux"]
        # the tensor inputs of each node, looking through identities
        self.inputs: dict[fx.Node, list[fx.Node]] = {}
        self.users: dict[fx.Node, list[fx.Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            if self.kind(n) == "identity":
                continue
            srcs = [self.resolve(a) for a in n.all_input_nodes if self.kind(a) != "aux"]
            self.inputs[n] = srcs
            for s in srcs:
                self.users[s].append(n)

    def kind(self, n: fx.Node) -> str:
        return n.meta["n2n_op"].kind

    def resolve(self, n: fx.Node) -> fx.Node:
        while self.kind(n) == "identity":
            n = [a for a in n.all_input_nodes if self.kind(a) != "aux"][0]
        return n

    def fail(self, n: fx.Node, why: str):
        raise UnsupportedModelError("", [f"{_describe(n, self.modules)}: {why}"])

    def sole_user(self, n: fx.Node) -> fx.Node | None:
        users = self.users[n]
        return users[0] if len(users) == 1 else None

    def parse(self) -> tuple[list[_Group], int]:
        start = next(n for n in self.nodes if self.kind(n) == "input")
        cur, groups, block = start, [], 0
        flattened = False
        while True:
            users = self.users[cur]
            if not users:
                self.fail(cur, "its value is not used by the output")
            if len(users) == 2 and not flattened:
                cur = self.block(cur, users, block, groups)
                block += 1
                continue
            if len(users) != 1:
                self.fail(cur, f"its value feeds {len(users)} operations (only residual pairs are supported)")
            u = users[0]
            k = self.kind(u)
            if k == "output":
                if not isinstance(u.args[0], fx.Node):
                    self.fail(u, "the output is not a single tensor")
                return groups, len(_shape(cur) or ())
            if k == "conv" and not flattened:
                g, cur = self.conv_group(u)
                groups.append(g)
            elif k in ("maxpool", "avgpool", "gap") and not flattened:
                op = u.meta["n2n_op"]
                groups.append(_Group(Layer(k if k != "gap" else GAP, kernel=op.args["kernel"],
                                           stride=op.args.get("stride", 1), padding=op.args.get("padding", 0)),
                                     node=u))
                flattened = bool(op.args.get("flatten"))
                cur = u
            elif k == "flatten":
                flattened, cur = True, u
            elif k == "linear":
                shape = _shape(self.inputs[u][0])
                if shape is None or len(shape) != 2:
                    self.fail(u, f"a linear layer applied to a {len(shape or ())}-D tensor (flatten first)")
                relu = None
                nxt = self.sole_user(u)
                if nxt is not None and self.kind(nxt) == "relu":
                    relu = nxt
                m = self.modules[u.target]
                groups.append(_Group(Layer(LINEAR, out=m.out_features, relu=relu is not None), linear=m, node=u))
                flattened, cur = True, (relu or u)
            elif k == "bn":
                self.fail(u, "batch norm that does not directly follow a conv (e.g. pre-activation)")
            elif k == "relu":
                self.fail(u, "ReLU that does not directly follow a conv, linear or residual addition")
            elif k == "add":
                self.fail(u, "residual addition whose branches do not start at the same value")
            else:
                self.fail(u, f"{k} after flattening")

    def conv_group(self, conv: fx.Node, relu_allowed: bool = True) -> tuple[_Group, fx.Node]:
        op, cur, bn, relu = conv.meta["n2n_op"], conv, None, False
        nxt = self.sole_user(cur)
        if nxt is not None and self.kind(nxt) == "bn":
            bn, cur = nxt, nxt
            nxt = self.sole_user(cur)
        if nxt is not None and self.kind(nxt) == "relu":
            relu, cur = True, nxt
        m = op.module
        layer = Layer(CONV, out=m.out_channels, kernel=op.args["kernel"], stride=op.args["stride"],
                      padding=op.args["padding"], relu=relu)
        return _Group(layer, conv=m, bn=self.modules[bn.target] if bn is not None else None, node=conv), cur

    def branch(self, n: fx.Node) -> tuple[list[_Group], fx.Node]:
        """Conv layers from ``n`` on until an addition; (groups, the addition)."""
        groups = []
        while self.kind(n) != "add":
            if self.kind(n) == "bn":
                self.fail(n, "batch norm that does not directly follow a conv (e.g. pre-activation)")
            if self.kind(n) != "conv":
                self.fail(n, "only conv (+BN +ReLU) layers may sit inside a residual block")
            g, last = self.conv_group(n)
            groups.append(g)
            nxt = self.sole_user(last)
            if nxt is None:
                self.fail(last, "a residual branch that forks or ends without an addition")
            n = nxt
        return groups, n

    def block(self, cur: fx.Node, users: list[fx.Node], block: int, groups: list[_Group]) -> fx.Node:
        branches = []
        for u in users:
            branches.append(([], u) if self.kind(u) == "add" else self.branch(u))
        (a, add_a), (b, add_b) = branches
        if add_a is not add_b:
            self.fail(add_a, "the two branches of a residual block end in different additions")
        add = add_a
        body, shortcut = (a, b) if len(a) >= len(b) else (b, a)
        if not body:
            self.fail(add, "an addition of a value to itself")
        if len(shortcut) > 1 or (shortcut and shortcut[0].layer.relu):
            self.fail(add, "a residual shortcut of more than one conv (+BN), or with a ReLU")
        if body[-1].layer.relu:
            self.fail(body[-1].node, "ReLU before the residual addition (the IR applies it after)")
        relu = self.sole_user(add)
        if relu is None or self.kind(relu) != "relu":
            self.fail(add, "a residual addition not followed by a ReLU (the IR's blocks are relu(body(x) + shortcut(x)))")
        for g in body:
            g.layer = dataclasses.replace(g.layer, block=block, role=BODY)
            groups.append(g)
        for g in shortcut:
            g.layer = dataclasses.replace(g.layer, block=block, role=SHORTCUT)
            groups.append(g)
        return relu


# ----------------------------------------------------------------------- weights
@torch.no_grad()
def _fill(net: nn.Module, groups: list[_Group]) -> list[str]:
    notes: set[str] = set()
    for i, g in enumerate(groups):
        if g.conv is not None:
            conv, bn = net.layers[i][0], net.layers[i][1]
            conv.weight.copy_(g.conv.weight.float())
            bias = g.conv.bias.float() if g.conv.bias is not None else torch.zeros(g.layer.out)
            if g.bn is None:
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - BN_EPS)
                notes.add("a conv without batch norm got an identity batch norm (2 parameters per channel)")
                continue
            src = g.bn
            gamma = src.weight.float() if src.weight is not None else torch.ones(g.layer.out)
            beta = src.bias.float() if src.bias is not None else torch.zeros(g.layer.out)
            var = src.running_var.float()
            if src.eps != BN_EPS:
                gamma = gamma * torch.sqrt(var + BN_EPS) / torch.sqrt(var + src.eps)
                notes.add(f"batch norm eps {src.eps:g} folded into its scale")
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
            bn.running_mean.copy_(src.running_mean.float() - bias)
            bn.running_var.copy_(var)
            if src.num_batches_tracked is not None:
                bn.num_batches_tracked.copy_(src.num_batches_tracked)
            if g.conv.bias is not None:
                notes.add("conv biases before batch norm folded into its running mean (not counted)")
        elif g.linear is not None:
            lin = net.layers[i][1]
            lin.weight.copy_(g.linear.weight.float())
            if g.linear.bias is not None:
                lin.bias.copy_(g.linear.bias.float())
            else:
                lin.bias.zero_()
                notes.add("a linear layer without bias got a zero bias (counted)")
    return sorted(notes)


def weights_digest(arch: Architecture, state: dict[str, torch.Tensor]) -> str:
    """sha256 of the architecture's canonical hash and every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(arch.canonical_hash().encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------- API
def import_module(model: nn.Module, example_input: torch.Tensor, *, name: str = "", atol: float = 1e-5,
                  check_inputs: int = 2) -> ImportedModel:
    """The teacher in the IR with its weights, from ``model`` and an ``example_input``.

    ``example_input``: a float tensor (N, C, H, W); C, H, W become the architecture's input
    shape and the output's width its number of classes. The model is traced in eval mode
    (its per-module train/eval flags are restored afterwards) and the import is checked on
    ``check_inputs`` random batches like ``example_input``: the eval-mode logits of the
    imported network and of ``model`` must agree within ``atol`` (max abs difference).

    Raises :class:`UnsupportedModelError` (a ``ValueError``) with every unsupported
    operation and the module it sits in, ``TypeError`` for a non-module or a bad example
    input, and :class:`ImportMismatchError` if the logits do not agree.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"import_module needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4 or not example_input.is_floating_point():
        raise TypeError("example_input must be a float tensor of shape (N, C, H, W), e.g. torch.randn(2, 3, 32, 32)")
    cls = type(model).__name__
    name = name or cls
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return _import(model, example_input.detach().float().cpu(), name, cls, atol, check_inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _import(model, x, name, cls, atol, check_inputs) -> ImportedModel:
    tracer = _ScopeTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent code
        raise UnsupportedModelError(
            f"Cannot import {cls}: torch.fx cannot trace its forward pass ({type(exc).__name__}: {exc}); "
            "n2n-gym imports models whose forward is a fixed graph of " + SUPPORTED + ".", []) from exc
    gm = fx.GraphModule(tracer.root, graph, cls)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        try:
            # torch.fx prints the generated code around a failing node to stderr: the error
            # below says what went wrong in one sentence instead
            with contextlib.redirect_stderr(io.StringIO()):
                ShapeProp(gm).propagate(x.to(device=device, dtype=dtype))
        except Exception as exc:
            root = exc
            while root.__cause__ is not None or root.__context__ is not None:
                root = root.__cause__ or root.__context__
            first = (str(root).strip().splitlines() or [""])[0]
            raise TypeError(f"{cls} cannot run on the example input of shape {tuple(x.shape)}: "
                            f"{type(root).__name__}: {first}") from exc
    modules = dict(gm.named_modules())
    bad = []
    for node in gm.graph.nodes:
        op = _classify(node, modules)
        if isinstance(op, str):
            bad.append(f"{_describe(node, modules)}: {op}")
            op = _Op("unsupported")
        node.meta["n2n_op"] = op
    if bad:
        raise UnsupportedModelError(
            f"Cannot import {cls}: {len(bad)} operation(s) fall outside what n2n-gym's architecture IR expresses "
            f"({SUPPORTED}):", bad)
    shared = _shared_weights(gm.graph, modules)
    if shared:
        raise UnsupportedModelError(
            f"Cannot import {cls}: its forward uses the same weights at several places (weight sharing); the IR gives "
            "every layer weights of its own, so it would be imported as a larger network than it is:", shared)
    try:
        groups, out_dims = _Parser(gm.graph, modules).parse()
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"Cannot import {cls}: its graph does not have the IR's structure (a chain of layers with residual "
            "blocks relu(body(x) + shortcut(x))):", exc.nodes) from None
    out_shape = _shape([n for n in gm.graph.nodes if n.op == "output"][0].args[0])
    if out_dims != 2 or out_shape is None:
        raise UnsupportedModelError(f"Cannot import {cls}: its output is not a (N, classes) tensor of logits:",
                                    [f"output shape {out_shape}"])
    layers = [dataclasses.replace(g.layer, origin=i) for i, g in enumerate(groups)]
    try:
        arch = Architecture(tuple(x.shape[1:]), int(out_shape[1]), tuple(layers), name=name)
        arch.shapes()
    except ArchitectureError as exc:
        raise UnsupportedModelError(f"Cannot import {cls}: the layers read from its graph do not form a valid "
                                    f"architecture ({exc}):", [str(exc)]) from None
    net = build(arch, "cpu").eval()
    notes = _fill(net, groups)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    diff = _max_abs_diff(model, net, x, check_inputs, device, dtype)
    if not diff <= atol:
        raise ImportMismatchError(f"the imported {cls} differs from the module by {diff:.3g} (> {atol:g}) on random "
                                  "inputs; please report this model")
    return ImportedModel(arch, state, weights_digest(arch, state), sum(p.numel() for p in model.parameters()),
                         diff, tuple(notes))


def _shared_weights(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[str]:
    """Modules with weights that ``forward`` calls more than once, and weights that two
    called modules hold in common (``b.weight = a.weight``)."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and next(modules[node.target].parameters(recurse=False), None) is not None:
            calls[node.target] = calls.get(node.target, 0) + 1
    out = [f"module `{t}` ({type(modules[t]).__name__}) is called {n} times" for t, n in calls.items() if n > 1]
    owner: dict[int, str] = {}
    for target in calls:
        for name, p in modules[target].named_parameters(recurse=False):
            if owner.setdefault(id(p), target) != target:
                out.append(f"`{target}.{name}` is the same tensor as a weight of `{owner[id(p)]}`")
    return out


@torch.no_grad()
def _max_abs_diff(model, net, x, n: int, device, dtype) -> float:
    # compared in the module's memory format: build()'s channels_last (a speed choice) only
    # reorders the conv sums, a difference of the kernels (~1e-6 relative), not of the import
    net = net.to(memory_format=torch.contiguous_format)
    gen = torch.Generator().manual_seed(0)
    diff = 0.0
    for i in range(max(n, 1)):
        inp = x if i == 0 else torch.randn(x.shape, generator=gen)
        want = model(inp.to(device=device, dtype=dtype)).float().cpu()
        got = net(inp)
        diff = max(diff, float((want - got).abs().max()))
    return diff


# ----------------------------------------------------------- models named by the user
def load_model(spec: str, checkpoint: str | None = None) -> nn.Module:
    """The ``nn.Module`` that ``"package.module:factory"`` names: the factory (a function or
    class) is called without arguments -- or with the literal keyword arguments of
    ``"package.module:factory(num_classes=10)"`` -- with torch's RNG seeded to 0 (so a randomly
    initialised model is the same in every process; the caller's RNG is left alone). The
    current directory is importable, as for ``python -m``. ``checkpoint``: a ``state_dict``
    (or a dict holding one under ``"state_dict"`` / ``"model"``; a DataParallel ``module.``
    prefix is dropped) loaded strictly into the model.

    Raises ``ValueError`` for a malformed spec, a factory that cannot be found or does not
    return an ``nn.Module``, or a checkpoint that does not fit the model.
    """
    import importlib
    import os
    import sys

    module_name, sep, call = str(spec).partition(":")
    attr, kwargs = _parse_call(call)
    if not sep or not module_name or not attr:
        raise ValueError(f"model {spec!r}: expected 'package.module:factory' or 'package.module:factory(key=value, "
                         "...)' with literal values, e.g. 'torchvision.models:resnet18(num_classes=10)' or "
                         "'mymodels:make_net' (a function or class in mymodels.py returning an nn.Module)")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot find the model factory {spec!r}: {type(exc).__name__}: {exc}") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = obj(**kwargs)
        except TypeError as exc:
            raise ValueError(f"calling the model factory {spec!r} failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged or foreign file
            raise ValueError(f"cannot read the weights {checkpoint}: {type(exc).__name__}: {exc}") from exc
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint} holds a {type(state).__name__}, not a state_dict")
        if all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"the weights {checkpoint} do not fit {spec}: {exc}") from exc
    return model


_SPEC_IMPORTS: dict[tuple, ImportedModel] = {}


def _parse_call(text: str) -> tuple[str, dict]:
    """``"name.attr(key=1, other='x')"`` -> ("name.attr", {...}); keyword arguments with
    literal values only (no code runs). ("", {}) when malformed."""
    import ast

    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return "", {}
    if isinstance(tree, ast.Call):
        if tree.args or any(k.arg is None for k in tree.keywords):
            return "", {}
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
        except ValueError:
            return "", {}
        tree = tree.func
    else:
        kwargs = {}
    parts = []
    while isinstance(tree, ast.Attribute):
        parts.append(tree.attr)
        tree = tree.value
    if not isinstance(tree, ast.Name):
        return "", {}
    return ".".join([tree.id, *reversed(parts)]), kwargs


def import_teacher(model: nn.Module | str, data_info, checkpoint: str | None = None) -> ImportedModel:
    """Import ``model`` (an ``nn.Module``, or a ``"package.module:factory"`` spec with an
    optional ``checkpoint``: :func:`load_model`) for a data set (``n2n_gym.data.DatasetInfo``):
    traced on a seeded random input of the data set's shape; its classes must be the data set's.

    Raises ``ValueError`` (``UnsupportedModelError`` among them) with the problem and the fix.
    """
    if isinstance(model, str):
        import os

        # a spec names the same weights every time (the factory is seeded): import once per process
        stamp = os.stat(checkpoint).st_mtime_ns if checkpoint and os.path.exists(checkpoint) else None
        key = (model, checkpoint, stamp, tuple(data_info.input_shape), data_info.num_classes)
        if key not in _SPEC_IMPORTS:
            imported = import_teacher(load_model(model, checkpoint), data_info)
            # named by the spec the user gave (the name is not part of the architecture's hash)
            arch = dataclasses.replace(imported.architecture, name=model)
            _SPEC_IMPORTS[key] = dataclasses.replace(imported, architecture=arch)
        return _SPEC_IMPORTS[key]
    if checkpoint is not None:
        raise ValueError("teacher_checkpoint goes with a 'package.module:factory' teacher_module; load the weights "
                         "into your nn.Module yourself (model.load_state_dict(...))")
    elif not isinstance(model, nn.Module):
        raise TypeError(f"teacher_module must be an nn.Module or 'package.module:factory', not {type(model).__name__}")
    example = torch.randn(2, *data_info.input_shape, generator=torch.Generator().manual_seed(0))
    try:
        imported = import_module(model, example)
    except TypeError as exc:
        raise ValueError(f"{exc} (the data set {data_info.name} has images of shape {data_info.input_shape}; "
                         "pass a model for that input shape)") from exc
    if imported.architecture.num_classes != data_info.num_classes:
        raise ValueError(f"{type(model).__name__} gives {imported.architecture.num_classes} outputs but the data set "
                         f"{data_info.name} has {data_info.num_classes} classes; build it with "
                         f"num_classes={data_info.num_classes}")
    return imported
