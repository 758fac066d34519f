"""TAS baseline: differentiable width and depth search, then the searched student is
scored by the env like every other agent's.

Dong and Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019
(arXiv 1905.09717; official code github.com/D-X-Y/AutoDL-Projects). The facts used here
are in ../shared/reference/papers.md (TAS section).

One readable file, CleanRL style::

    python -m n2n_gym.agents.tas --help
    python -m n2n_gym.agents.tas --flops-ratio 0.5 --epochs 100 --out runs/tas-digits
    python -m n2n_gym.agents.tas --env-id N2N-ResNet20-CIFAR10-v0 --flops-ratio 0.55 --final-epochs 300

Searchable network (:class:`SearchableNetwork`, built from any teacher of the zoo)
--------------------------------------------------------------------------------
- **Width**: one full-width weight per conv; a candidate width takes the first channels
  (shared weights) and has its own BatchNorm. Candidates are the ratios
  {0.3, 0.4, ..., 1.0} of the layer's width, turned into widths exactly as the env turns
  a ratio into a width (``n2n_gym.ir.edits.shrunk_width``, floor ``min_width`` = 10), so the
  derived student is the env's. Residual additions tie widths: one width distribution per
  channel space (``n2n_gym.ir.edits.channel_groups``: the stem and the identity blocks of a
  stage share one), so the derived architecture is always valid. Each forward samples
  I = 2 candidates per distribution without replacement from the Gumbel-softmax
  probabilities (temperature tau) and mixes their outputs with the two re-normalised
  weights, after channel-wise interpolation (CWI: adaptive average pooling over channels
  to the larger width).
- **Depth** (residual teachers; VGG-style teachers have no blocks, so only widths are
  searched): per stage (consecutive blocks adding into one channel space) a distribution
  over candidate block counts ({1, 2, 3} for 3 blocks, {1, 3, 5, ...} plus n otherwise);
  the stage's output is the Gumbel-softmax-weighted sum of the (CWI-aligned) outputs
  after each candidate depth.
- **Expected FLOPs** (:meth:`SearchableNetwork.expected_flops`): softmax-expected widths
  (no noise), each layer of block j of a stage weighted by P(depth > j); the IR's
  convention (2 FLOPs per MAC of conv and linear layers), so with one-hot distributions it
  is exactly ``Architecture.flops`` of the derived student (tested).
- **Initialisation** from the teacher's weights (``--init teacher``): every channel space
  is first ordered by the teacher's filter L1 norms (summed over the space's layers, as
  ``n2n_gym.ir.build.inherit_weights`` scores them), so a width's channel prefix holds the
  channels that weight inheritance would keep; at full width the network computes the
  teacher's function. Each candidate's BatchNorm starts from the teacher's.

Search (:func:`search`)
-----------------------
The training split (or ``--train-images`` of it) is split 50/50. Each step is one weight
step (cross-entropy, SGD Nesterov 0.9, lr 0.1 cosine, wd 5e-4) on a batch of one half
and one architecture step (CE + lambda * L_cost, Adam lr 1e-3, betas (0.5, 0.999), wd
1e-3) on a batch of the other; tau follows a cosine from 5 to 0.1 (per step). The cost
loss (lambda = 2): with F the FLOPs of the current argmax architecture, R = target ratio
x teacher FLOPs and t = 5 % of the teacher FLOPs, L_cost = -log E[F] if F < R - t,
+log E[F] if F > R, else 0.

Selecting the student
---------------------
At every genotype checkpoint (once per search epoch by default, as the official code)
the argmax architecture is recorded; those whose FLOPs lie in the band [R - t, R] are
scored inside the searchable network on the architecture half, and the most accurate
one is the student (``--select best-in-band``, the selection of the official
``search-shape.py``; the last genotype when none is in the band). ``--select last``
takes the final argmax. Short searches need the selection: the argmax architecture
flips in and out of the band from step to step while the logits are still close.

Derived student and score
-------------------------
The selected argmax widths and depths become per-layer decisions (``None`` = removed: the body
layers of the blocks beyond the chosen depth; a ratio for each channel space's first
producer; 1.0 elsewhere) that ``n2n_gym.ir.edits.apply_decisions`` turns into the student,
which carries the teacher origins. The decisions are replayed as actions in
``gym.make(env_id, stage="joint", ratios=TAS ratios)``, so the student is scored by the
env's protocol exactly like an RL agent's, and the record is the env's terminal info
plus the search's figures. ``--final-epochs N`` adds the paper's final training: the
student from scratch with KD ((1 - a) CE + a T^2 KL, a = 0.9, T = 4, SGD lr 0.1 cosine),
reported next to the env's score (the reward stays the env's).

Compute in student-epoch equivalents
------------------------------------
Every search step pushes a batch through the sampled network twice (weight and
architecture step; both count as a full forward/backward pass). ``student_epochs`` is
the search's FLOPs (each pass at the sampled, executed widths and depths) divided by
(derived student FLOPs x training-split size): the number of epochs of training the
derived student that cost as much. ``teacher_epochs`` uses the teacher's FLOPs instead.
An RL agent spends ``protocol.epochs x train_images / train split size`` student epochs
per evaluated student (fast protocol); TAS's single evaluation is added in
``total_student_epochs``. ``--budget-evaluations B`` sizes the search to the compute of B
such evaluations (less TAS's own one), estimating a step's cost from networks sampled
from the initial distributions and the student at the target FLOPs; the record reports
what was actually spent. Through the benchmark runner (:func:`run_benchmark`) the
runner's ``--budget`` becomes ``budget_evaluations``.

Deviations from the paper, all deliberate: shared width distributions per channel space
instead of one per conv with CWI on residual additions (the env's IR ties these widths);
the env's 10-channel floor on widths (so small layers have repeated candidate widths);
the searchable network starts from the teacher's weights, channels ordered by L1 norm
(the official search trains it from scratch: ``--init random``); tau updated per step,
not per epoch; no warm-up epochs; hidden linear layers (none in the zoo) keep their
width.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

import n2n_gym
from n2n_gym.agents.n2n import add_args, args_or_exit, student_record
from n2n_gym.data.datasets import Dataset, DatasetInfo, batches
from n2n_gym.envs.registration import resolve_protocol
from n2n_gym.evaluation.distill import accuracy
from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.ir.arch import CONV, LINEAR, Architecture
from n2n_gym.ir.build import Network, build
from n2n_gym.ir.edits import (
    MIN_WIDTH,
    apply_decisions,
    channel_groups,
    layer_rules,
    producers,
    shrunk_width,
)
from n2n_gym.utils.checks import check_choice, check_float, check_int

TAS_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the same float literals as the env's "uniform" table


@dataclass
class Args:
    """Settings of a TAS search (``python -m n2n_gym.agents.tas --help``)."""

    env_id: str = n2n_gym.DEFAULT_ENV_ID
    """Gymnasium id of the compression environment (teacher, data, evaluation protocol)"""
    env_kwargs: dict = field(default_factory=dict)
    """extra keyword arguments of gym.make, as JSON (e.g. '{"teacher_recipe": {"epochs": 3}}')"""
    protocol: str | None = None
    """student evaluation protocol of the env (default: the env id's own, e.g. fast for the v0 ids)"""
    flops_ratio: float = 0.5
    """target FLOPs of the student as a fraction of the teacher's (R / F_teacher)"""
    tolerance: float = 0.05
    """width t of the accepted band [R - t, R], as a fraction of the teacher's FLOPs (paper: 0.05)"""
    cost_weight: float = 2.0
    """lambda, weight of the FLOPs cost loss in the architecture step (paper: 2)"""
    ratios: str = "0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"
    """candidate width ratios, comma-separated, with 1.0 (paper: 0.3 .. 1.0, 8 candidates)"""
    num_sampled: int = 2
    """I: candidate widths sampled per distribution and forward pass (paper: 2)"""
    search_depth: bool = True
    """search the number of blocks per stage of residual teachers"""
    epochs: int = 600
    """search epochs: passes over the weight half of the search images (paper: 600)"""
    steps: int = 0
    """if > 0: the number of search steps (weight + architecture step pairs), overriding --epochs"""
    budget_evaluations: int = 0
    """if > 0: size the search (overriding --epochs, --steps) to the compute of this many RL student evaluations"""
    train_images: int = 0
    """images of the training split used by the search (0: all), split 50/50 into weight / architecture halves"""
    batch_size: int = 256
    """batch size of both steps (paper: 256)"""
    lr: float = 0.1
    """weight step: SGD learning rate, cosine-annealed to 0 (paper: 0.1)"""
    momentum: float = 0.9
    """weight step: Nesterov momentum (paper: 0.9)"""
    weight_decay: float = 5e-4
    """weight step: weight decay (paper: 5e-4)"""
    arch_lr: float = 1e-3
    """architecture step: Adam learning rate, betas (0.5, 0.999) (paper: 1e-3)"""
    arch_weight_decay: float = 1e-3
    """architecture step: Adam weight decay (paper: 1e-3)"""
    tau_max: float = 5.0
    """Gumbel-softmax temperature at the start (cosine schedule; paper: 5)"""
    tau_min: float = 0.1
    """Gumbel-softmax temperature at the end (paper: 0.1)"""
    select: str = "best-in-band"
    """the student: best-in-band (most accurate in-band genotype checkpoint, official code) | last (final argmax)"""
    select_every: int = 0
    """steps between genotype checkpoints (0: once per search epoch, as the official code)"""
    eval_images: int = 512
    """images of the architecture half that score a checkpoint's argmax network"""
    init: str = "teacher"
    """searchable weights: teacher (the teacher's weights, channels ordered by L1 norm) | random"""
    augment: bool = True
    """random crop (+ flip where the data allows) on search batches"""
    final_epochs: int = 0
    """if > 0: epochs of the paper's final training (from scratch with KD) of the student (paper: 300)"""
    final_lr: float = 0.1
    """final training: SGD learning rate, cosine (paper: 0.1)"""
    final_batch_size: int = 256
    """final training: batch size"""
    kd_alpha: float = 0.9
    """final training: weight a of the KD term in (1 - a) CE + a T^2 KL (paper: 0.9)"""
    kd_temperature: float = 4.0
    """final training: KD temperature T (paper: 4)"""
    seed: int = 0
    """seed of initialisation, data order and Gumbel noise"""
    device: str = "auto"
    """device of the search and the env's student training: auto | cpu | cuda"""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)"""
    log_every: int = 50
    """log the search every this many steps"""
    out: str | None = None
    """folder for record.json and search_log.jsonl"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        """Every setting checked where it is given (flops_ratio 1.5 used to run to the end)."""
        if not isinstance(self.env_kwargs, dict):
            raise TypeError(f"env_kwargs must be a dict (JSON object), got {type(self.env_kwargs).__name__}")
        self.protocol = resolve_protocol(self.env_id, self.protocol)
        check_choice("protocol", self.protocol, sorted(PROTOCOLS))
        check_float("flops_ratio", self.flops_ratio, min=0.0, max=1.0, min_open=True)
        check_float("tolerance", self.tolerance, min=0.0, max=1.0)
        check_float("cost_weight", self.cost_weight, min=0.0)
        self.ratio_list()
        for name, lo in (("num_sampled", 1), ("epochs", 1), ("steps", 0), ("budget_evaluations", 0),
                         ("train_images", 0), ("batch_size", 1), ("select_every", 0), ("eval_images", 1),
                         ("final_epochs", 0), ("final_batch_size", 1), ("seed", 0), ("threads", 0), ("log_every", 1)):
            check_int(name, getattr(self, name), min=lo)
        for name in ("lr", "arch_lr", "final_lr", "tau_min", "kd_temperature"):
            check_float(name, getattr(self, name), min=0.0, min_open=True)
        for name in ("weight_decay", "arch_weight_decay"):
            check_float(name, getattr(self, name), min=0.0)
        check_float("momentum", self.momentum, min=0.0, max=1.0, max_open=True)
        check_float("kd_alpha", self.kd_alpha, min=0.0, max=1.0)
        check_float("tau_max", self.tau_max, min=self.tau_min)
        check_choice("select", self.select, ("best-in-band", "last"))
        check_choice("init", self.init, ("teacher", "random"))

    def ratio_list(self) -> tuple[float, ...]:
        try:
            ratios = tuple(sorted(float(r) for r in str(self.ratios).split(",") if r.strip()))
        except ValueError:
            ratios = ()
        if not ratios or 1.0 not in ratios or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"--ratios must be values in (0, 1] including 1.0, got {self.ratios!r}")
        return ratios


# ---------------------------------------------------------------------------- building blocks
def channel_wise_interpolate(x: torch.Tensor, channels: int) -> torch.Tensor:
    """CWI: resize the channel dimension of an NCHW tensor to ``channels`` by adaptive
    average pooling over channels (TAS's ChannelWiseInterV2)."""
    if x.shape[1] == channels:
        return x
    # a 4-D input is an unbatched 3-D volume (C=N, D=channels, H, W) for adaptive_avg_pool3d
    return F.adaptive_avg_pool3d(x, (channels, x.shape[2], x.shape[3]))


@functools.lru_cache(maxsize=None)
def cwi_matrix(channels_in: int, channels_out: int) -> torch.Tensor:
    """The (channels_out, channels_in) matrix of CWI: output channel j averages input
    channels floor(j C / C') .. ceil((j + 1) C / C') - 1, as adaptive average pooling does."""
    m = torch.zeros(channels_out, channels_in)
    for j in range(channels_out):
        lo, hi = (j * channels_in) // channels_out, -((-(j + 1) * channels_in) // channels_out)
        m[j, lo:hi] = 1.0 / (hi - lo)
    return m


def mix_candidates(outs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_j weights[j] * CWI(outs[j], widest): each narrower output is interpolated and
    weighted in one 1x1 convolution with the CWI matrix (the same values as
    :func:`channel_wise_interpolate`, several times faster on CPU)."""
    wide = max(o.shape[1] for o in outs)
    total = None
    for o, w in zip(outs, weights):
        if o.shape[1] == wide:
            total = o * w if total is None else total.addcmul(o, w)
            continue
        m = cwi_matrix(o.shape[1], wide).to(device=o.device, dtype=o.dtype)
        part = F.conv2d(o, (m * w)[:, :, None, None])
        total = part if total is None else total + part
    return total


def depth_choices(n: int) -> tuple[int, ...]:
    """TAS's candidate block counts of a stage of ``n`` blocks."""
    if n <= 3:
        return tuple(range(1, n + 1))
    choices = list(range(1, n + 1, 2))
    if choices[-1] != n:
        choices.append(n)
    return tuple(choices)


def gumbel_select(logits: torch.Tensor, tau: float, num: int, generator: torch.Generator | None = None,
                  eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """TAS's select2withP for a (G, K) logit table: Gumbel-softmax with temperature ``tau``,
    ``num`` candidates per row drawn without replacement from those probabilities, and
    their weights re-normalised (softmax of their perturbed logits). Returns (indices,
    weights), both (G, num); the weights carry gradients to ``logits``."""
    perturbed = gumbel_logits(logits, tau, generator)
    num = min(num, logits.shape[1])
    with torch.no_grad():
        index = torch.multinomial(perturbed.softmax(-1).cpu() + eps, num, replacement=False, generator=generator)
    index = index.to(logits.device)
    return index, perturbed.gather(1, index).softmax(-1)


def gumbel_logits(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(log_softmax(logits) + Gumbel noise) / tau."""
    noise = torch.empty(logits.shape, dtype=logits.dtype).exponential_(generator=generator).clamp_min(1e-20)
    return (logits.log_softmax(-1) - noise.log().to(logits.device)) / tau


def cost_loss(expected_flops: torch.Tensor, argmax_flops: float, target: float, tolerance: float) -> torch.Tensor:
    """TAS's asymmetric FLOPs loss: -log E[F] below the band [target - tolerance, target]
    (grow), +log E[F] above it (shrink), 0 inside (all in the FLOPs' own units)."""
    if argmax_flops < target - tolerance:
        return -torch.log(expected_flops)
    if argmax_flops > target:
        return torch.log(expected_flops)
    return expected_flops.new_zeros(())


@dataclass
class Sample:
    """One forward pass's choices: per width group the sampled candidate indices and their
    mixing weights; per stage the weights over its candidate depths."""

    width_index: torch.Tensor  # (G, I) long
    width_weight: torch.Tensor  # (G, I)
    depth_weight: list[torch.Tensor]  # per stage, (len(choices),)


class SearchableConv(nn.Module):
    """A conv of the IR at full width; ``widths`` candidate output widths share its first
    channels, each with its own BatchNorm. ReLU after mixing, as in TAS."""

    def __init__(self, layer, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.stride, self.padding, self.relu = layer.stride, layer.padding, layer.relu
        self.widths = tuple(int(w) for w in widths)
        self.weight = nn.Parameter(torch.empty(layer.out, in_channels, layer.kernel, layer.kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bns = nn.ModuleList(nn.BatchNorm2d(w) for w in self.widths)

    def forward(self, x: torch.Tensor, index: Sequence[int], weight: torch.Tensor | None) -> torch.Tensor:
        widths = [self.widths[k] for k in index]
        wide = max(widths)
        y = F.conv2d(x, self.weight[:wide, : x.shape[1]], None, self.stride, self.padding)
        if len(index) == 1:
            out = self.bns[index[0]](y if widths[0] == wide else y[:, : widths[0]])
            out = out if weight is None else out * weight[0]
        else:
            out = mix_candidates([self.bns[k](y[:, :w]) for k, w in zip(index, widths)], weight)
        return F.relu(out) if self.relu else out


class SearchableLinear(nn.Module):
    """A linear layer of the IR at full width; it reads the first input channels it is given."""

    def __init__(self, layer, in_channels: int, in_hw: int):
        super().__init__()
        self.in_channels, self.in_hw, self.relu = in_channels, in_hw, layer.relu
        self.lin = nn.Linear(in_channels * in_hw, layer.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w = self.lin.weight
        if c != self.in_channels:  # features are channel-major: feature = channel * hw + position
            w = w.view(w.shape[0], self.in_channels, self.in_hw)[:, :c].reshape(w.shape[0], c * self.in_hw)
        out = F.linear(x.flatten(1), w, self.lin.bias)
        return F.relu(out) if self.relu else out


class SearchableNetwork(nn.Module):
    """The TAS search space over a teacher :class:`Architecture` (see the module docstring).

    Width groups are the channel spaces whose first producer the env may shrink; every conv
    writing into a group uses the group's sampled widths. Stages are runs of consecutive
    residual blocks adding into one channel space.
    """

    def __init__(self, arch: Architecture, ratios: Sequence[float] = TAS_RATIOS, min_width: int = MIN_WIDTH,
                 search_depth: bool = True):
        super().__init__()
        self.arch, self.ratios, self.min_width = arch, tuple(float(r) for r in ratios), int(min_width)
        if 1.0 not in self.ratios:
            raise ValueError("the candidate ratios must include 1.0")
        layers, shapes, rules = arch.layers, arch.shapes(), layer_rules(arch)
        spaces, prod = channel_groups(arch), producers(arch)

        # width groups: channel spaces led by a shrinkable conv
        self.group_leaders = [i for i, l in enumerate(layers)
                              if l.kind == CONV and spaces[i] == i and rules[i].shrinkable]
        group_of_space = {lead: g for g, lead in enumerate(self.group_leaders)}
        self.group_widths = [tuple(shrunk_width(layers[lead].out, r, self.min_width) for r in self.ratios)
                             for lead in self.group_leaders]
        self.out_group = [group_of_space.get(spaces[i], -1) if l.kind == CONV else -1 for i, l in enumerate(layers)]
        self.in_group = [self.out_group[p] if p >= 0 else -1 for p in prod]
        widths = torch.tensor(self.group_widths, dtype=torch.float64).reshape(-1, len(self.ratios))
        self.register_buffer("_widths", widths, persistent=False)

        # stages and depth choices
        self.stages: list[list[tuple[list[int], int | None]]] = []
        self.depth_options: list[tuple[int, ...]] = []
        plan: list[tuple] = []
        prev_space = None
        for seg in arch.segments():
            if seg[0] == "layer":
                plan.append(("layer", seg[1]))
                prev_space = None
                continue
            _, body, shortcut = seg
            space = spaces[body[-1]]
            if prev_space is not None and space == prev_space:
                self.stages[-1].append((body, shortcut))
            else:
                self.stages.append([(body, shortcut)])
                plan.append(("stage", len(self.stages) - 1))
            prev_space = space
        for blocks in self.stages:
            # depth d keeps the first d blocks; a block may go only if the env can remove it
            removable = [sc is None and all(rules[k].removable for k in body) for body, sc in blocks]
            floor = max([j + 1 for j, r in enumerate(removable) if not r] + [1])
            options = tuple(d for d in depth_choices(len(blocks)) if d >= floor) if search_depth else (len(blocks),)
            self.depth_options.append(options)
        self.plan = plan
        self.stage_of: list[tuple[int, int] | None] = [None] * len(layers)  # layer -> (stage, block position)
        for s, blocks in enumerate(self.stages):
            for j, (body, shortcut) in enumerate(blocks):
                for k in body + ([shortcut] if shortcut is not None else []):
                    self.stage_of[k] = (s, j)

        # modules
        mods = {}
        for i, (layer, shape) in enumerate(zip(layers, shapes)):
            if layer.kind == CONV:
                g = self.out_group[i]
                widths = self.group_widths[g] if g >= 0 else (layer.out,)
                mods[str(i)] = SearchableConv(layer, shape.in_channels, widths)
            elif layer.kind == LINEAR:
                mods[str(i)] = SearchableLinear(layer, shape.in_channels, shape.in_features // shape.in_channels)
        self.layers = nn.ModuleDict(mods)
        self.width_logits = nn.Parameter(1e-2 * torch.randn(len(self.group_leaders), len(self.ratios)))
        self.depth_logits = nn.ParameterList(nn.Parameter(1e-2 * torch.randn(len(o))) for o in self.depth_options)

        # FLOPs bookkeeping: per conv/linear layer, 2 * k^2 * out_hw (times in/out widths, depth weight)
        self._flop_layers = []
        for i, (layer, shape) in enumerate(zip(layers, shapes)):
            if layer.kind == CONV:
                coef = 2 * layer.kernel**2 * shape.out_hw[0] * shape.out_hw[1]
                fixed_out = layer.out if self.out_group[i] < 0 else None
            elif layer.kind == LINEAR:
                coef = 2 * (shape.in_features // shape.in_channels)
                fixed_out = layer.out
            else:
                continue
            fixed_in = shape.in_channels if self.in_group[i] < 0 else None
            self._flop_layers.append((i, coef, self.in_group[i], fixed_in, self.out_group[i], fixed_out))
        self._survival_masks = [torch.tensor([[float(d > j) for d in options] for j in range(len(blocks))],
                                             dtype=torch.float64)
                                for options, blocks in zip(self.depth_options, self.stages)]
        self.teacher_flops = arch.flops

    # ---- parameters --------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.width_logits, *self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ---- sampling ----------------------------------------------------------------
    def sample(self, tau: float, num: int = 2, generator: torch.Generator | None = None) -> Sample:
        """Gumbel-softmax choices for one forward pass."""
        index, weight = gumbel_select(self.width_logits, tau, num, generator)
        depth = [gumbel_logits(d[None], tau, generator)[0].softmax(-1) for d in self.depth_logits]
        return Sample(index, weight, depth)

    def argmax_sample(self) -> Sample:
        """The argmax architecture as a sample (one candidate per group, one depth per stage)."""
        index = self.width_logits.argmax(-1, keepdim=True)
        depth = [F.one_hot(d.argmax(), len(d)).to(d.dtype) for d in self.depth_logits]
        return Sample(index, torch.ones_like(index, dtype=self.width_logits.dtype), depth)

    # ---- forward -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, sample: Sample | None = None) -> torch.Tensor:
        """Logits under ``sample`` (default: the argmax architecture)."""
        sample = sample or self.argmax_sample()
        index = sample.width_index.tolist()
        for kind, k in self.plan:
            if kind == "layer":
                x = self._layer(k, x, sample, index)
                continue
            options, probs = self.depth_options[k], sample.depth_weight[k]
            keep = [j for j, p in enumerate(probs.tolist()) if p != 0.0]
            deepest = max(options[j] for j in keep)
            outs = {}
            for j, (body, shortcut) in enumerate(self.stages[k][:deepest]):
                identity = x if shortcut is None else self._layer(shortcut, x, sample, index)
                for b in body:
                    x = self._layer(b, x, sample, index)
                x = F.relu(x + identity)
                outs[j + 1] = x
            if len(keep) == 1 and probs[keep[0]] == 1.0:
                x = outs[options[keep[0]]]
            else:
                x = mix_candidates([outs[options[j]] for j in keep], probs[keep])
        return x

    def _layer(self, i: int, x: torch.Tensor, sample: Sample, index: list[list[int]]) -> torch.Tensor:
        layer = self.arch.layers[i]
        if layer.kind == CONV:
            g = self.out_group[i]
            if g < 0:
                return self.layers[str(i)](x, [0], None)
            return self.layers[str(i)](x, index[g], sample.width_weight[g])
        if layer.kind == LINEAR:
            return self.layers[str(i)](x)
        if layer.kind == "maxpool":
            return F.max_pool2d(x, layer.kernel, layer.stride, layer.padding)
        if layer.kind == "avgpool":
            return F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding)
        return F.adaptive_avg_pool2d(x, 1)  # gap

    # ---- FLOPs -------------------------------------------------------------------
    def flops_for(self, group_widths: torch.Tensor, block_weights: list[torch.Tensor]) -> torch.Tensor:
        """FLOPs (2 per MAC, conv + linear) with width ``group_widths[g]`` per group and
        layers of block j of stage s weighted by ``block_weights[s][j]`` (float64)."""
        total = torch.zeros((), dtype=torch.float64, device=group_widths.device)
        for i, coef, g_in, fixed_in, g_out, fixed_out in self._flop_layers:
            c_in = group_widths[g_in] if fixed_in is None else fixed_in
            c_out = group_widths[g_out] if fixed_out is None else fixed_out
            term = coef * c_in * c_out
            if self.stage_of[i] is not None:
                s, j = self.stage_of[i]
                term = term * block_weights[s][j]
            total = total + term
        return total

    def _survival(self, probs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage, P(depth > j) for each block position j."""
        return [mask.to(p.device) @ p.to(torch.float64) for mask, p in zip(self._survival_masks, probs)]

    def expected_flops(self) -> torch.Tensor:
        """E[F]: softmax-expected widths (no noise), block j weighted by P(depth > j)."""
        probs = self.width_logits.to(torch.float64).softmax(-1)
        widths = (probs * self._widths).sum(-1)
        depth = [d.to(torch.float64).softmax(-1) for d in self.depth_logits]
        return self.flops_for(widths, self._survival(depth))

    @torch.no_grad()
    def argmax_flops(self) -> int:
        """FLOPs of the argmax architecture (equal to the derived student's ``Architecture.flops``)."""
        widths = self._widths.gather(1, self.width_logits.argmax(-1, keepdim=True)).squeeze(1)
        depth = [F.one_hot(d.argmax(), len(d)).to(torch.float64) for d in self.depth_logits]
        return int(round(float(self.flops_for(widths, self._survival(depth)))))

    @torch.no_grad()
    def sample_flops(self, sample: Sample) -> float:
        """FLOPs of one forward pass under ``sample``: every conv runs at the widest sampled
        width of its group and every block up to the deepest weighted depth."""
        widths = self._widths.gather(1, sample.width_index).max(1).values
        blocks = []
        for options, probs, stage in zip(self.depth_options, sample.depth_weight, self.stages):
            deepest = max(d for d, p in zip(options, probs.tolist()) if p != 0.0)
            blocks.append(torch.tensor([float(j < deepest) for j in range(len(stage))], dtype=torch.float64))
        return float(self.flops_for(widths, blocks))

    # ---- the derived student -----------------------------------------------------
    def chosen(self) -> tuple[list[float], list[int]]:
        """(argmax ratio per width group, argmax depth per stage)."""
        ratios = [self.ratios[k] for k in self.width_logits.argmax(-1).tolist()]
        depths = [o[int(d.argmax())] for o, d in zip(self.depth_options, self.depth_logits)]
        return ratios, depths

    def decisions(self) -> list[float | None]:
        """Per teacher layer: None (removed), else a width ratio (the env's decisions)."""
        ratios, depths = self.chosen()
        out: list[float | None] = [1.0] * len(self.arch.layers)
        for g, lead in enumerate(self.group_leaders):
            out[lead] = ratios[g]
        for blocks, depth in zip(self.stages, depths):
            for body, shortcut in blocks[depth:]:
                for k in body + ([shortcut] if shortcut is not None else []):
                    out[k] = None
        return out

    def derived_architecture(self) -> Architecture:
        return apply_decisions(self.arch, self.decisions(), self.min_width)

    # ---- initialisation from the teacher -----------------------------------------
    @torch.no_grad()
    def load_teacher(self, teacher: Network, order_by_l1: bool = True) -> "SearchableNetwork":
        """Copy the teacher's weights (same architecture), each width group's channels
        ordered by descending L1 norm (summed over the group's convs) so that prefixes
        keep the strongest channels. At full width the result computes the teacher."""
        if teacher.arch.canonical_hash() != self.arch.canonical_hash():
            raise ValueError("the teacher module's architecture is not the searched one")
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.out_group):
            if g >= 0:
                members.setdefault(g, []).append(i)
        perm = {}
        for g, idx in members.items():
            if order_by_l1:
                score = sum(teacher.layers[i][0].weight.abs().flatten(1).sum(1).float().cpu() for i in idx)
                perm[g] = torch.argsort(score, descending=True, stable=True)
            else:
                perm[g] = torch.arange(self.arch.layers[idx[0]].out)
        for i, layer in enumerate(self.arch.layers):
            mod = self.layers[str(i)] if str(i) in self.layers else None
            if mod is None:
                continue
            g_in, g_out = self.in_group[i], self.out_group[i]
            if layer.kind == CONV:
                conv, bn = teacher.layers[i][0], teacher.layers[i][1]
                out_idx = perm[g_out] if g_out >= 0 else torch.arange(layer.out)
                w = conv.weight[out_idx.to(conv.weight.device)]
                if g_in >= 0:
                    w = w[:, perm[g_in].to(w.device)]
                mod.weight.copy_(w)
                for cand, width in zip(mod.bns, mod.widths):
                    sel = out_idx[:width].to(bn.weight.device)
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(cand, name).copy_(getattr(bn, name)[sel])
            else:
                lin = teacher.layers[i][1]
                w = lin.weight
                if g_in >= 0:
                    w = w.view(w.shape[0], mod.in_channels, mod.in_hw)[:, perm[g_in].to(w.device)].reshape(w.shape)
                mod.lin.weight.copy_(w)
                mod.lin.bias.copy_(lin.bias)
        return self


# ---------------------------------------------------------------------------- the search
@dataclass
class SearchResult:
    network: SearchableNetwork
    decisions: list[float | None]  # of the selected genotype
    architecture: Architecture  # the derived student
    group_ratios: list[float]  # the selected genotype: ratio per width group ...
    stage_depths: list[int]  # ... and blocks per stage
    selected_step: int  # the step after which the selected genotype was the argmax
    selected_accuracy: float | None  # its accuracy inside the searchable network (None: not measured)
    checkpoints: list[dict]  # every genotype checkpoint: step, FLOPs ratio, in band, accuracy
    log: list[dict]
    steps: int
    images: int  # images through the sampled network, weight + architecture steps
    half_images: int  # images in each half of the search data (an epoch of the search is a pass over one)
    search_flops: float  # forward FLOPs of the training passes at the executed widths, plus checkpoint evaluations
    seconds: float
    in_band: bool
    flops_ratio: float  # derived student's FLOPs / teacher FLOPs


def _forever(x, y, batch_size, generator, augment, info, normalize):
    while True:
        yield from batches(x, y, batch_size, shuffle=True, generator=generator, augment=augment, info=info,
                           normalize=normalize, drop_last=len(x) > batch_size)


def tau_at(progress: float, tau_max: float, tau_min: float) -> float:
    """Cosine from tau_max (progress 0) to tau_min (progress 1)."""
    return tau_min + (tau_max - tau_min) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2


@torch.no_grad()
def argmax_accuracy(net: SearchableNetwork, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo,
                    normalize=None, batch_size: int = 500) -> float:
    """Accuracy of the current argmax architecture inside the searchable network (eval mode)."""
    was_training = net.training
    net.eval()
    sample = net.argmax_sample()
    correct = 0
    for xb, yb in batches(x, y, batch_size, shuffle=False, info=info, normalize=normalize):
        correct += int((net(xb, sample).argmax(1) == yb).sum())
    net.train(was_training)
    return correct / max(len(y), 1)


def search(net: SearchableNetwork, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo, args: Args,
           normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
           on_log: Callable[[dict], None] | None = None) -> SearchResult:
    """Run TAS's alternating search on uint8 images ``x`` (labels ``y``), split 50/50 into
    the weight and the architecture halves, and select the student (see ``Args.select``)."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x), generator=gen).to(x.device)
    half = len(x) // 2
    if half < 1:
        raise ValueError("the search needs at least 2 images")
    if args.select not in ("best-in-band", "last"):
        raise ValueError(f"--select must be best-in-band or last, got {args.select!r}")
    xw, yw = x[order[:half]], y[order[:half]]
    xa, ya = x[order[half:2 * half]], y[order[half:2 * half]]
    xe, ye = xa[: args.eval_images], ya[: args.eval_images]
    steps_per_epoch = max(1, half // args.batch_size)
    steps = args.steps if args.steps > 0 else args.epochs * steps_per_epoch
    every = args.select_every if args.select_every > 0 else steps_per_epoch
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=args.lr, momentum=args.momentum,
                            weight_decay=args.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(steps, 1))
    a_params = net.arch_parameters()
    a_opt = torch.optim.Adam(a_params, lr=args.arch_lr, betas=(0.5, 0.999), weight_decay=args.arch_weight_decay)
    f0 = float(net.teacher_flops)
    target, tol = args.flops_ratio * f0, args.tolerance * f0
    w_batches = _forever(xw, yw, args.batch_size, gen, args.augment, info, normalize)
    a_batches = _forever(xa, ya, args.batch_size, gen, args.augment, info, normalize)
    log: list[dict] = []
    checkpoints: list[dict] = []
    best: dict | None = None
    images, search_flops = 0, 0.0
    net.train()
    bar = None
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="TAS search", unit="step")
    for step in range(steps):
        tau = tau_at(step / max(steps - 1, 1), args.tau_max, args.tau_min)
        # weight step: sampled architecture, CE, SGD on the shared weights
        xb, yb = next(w_batches)
        with torch.no_grad():
            s = net.sample(tau, args.num_sampled, gen)
        w_loss = F.cross_entropy(net(xb, s), yb)
        w_opt.zero_grad(set_to_none=True)
        w_loss.backward()
        w_opt.step()
        sched.step()
        images, search_flops = images + len(xb), search_flops + len(xb) * net.sample_flops(s)
        # architecture step: CE + lambda * cost, Adam on the logits
        xb, yb = next(a_batches)
        s = net.sample(tau, args.num_sampled, gen)
        ce = F.cross_entropy(net(xb, s), yb)
        expected = net.expected_flops()
        argmax_f = net.argmax_flops()
        cost = cost_loss(expected, argmax_f, target, tol)
        loss = ce + args.cost_weight * cost.to(ce.dtype)
        grads = torch.autograd.grad(loss, a_params, allow_unused=True)
        for p, g in zip(a_params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        a_opt.step()
        images, search_flops = images + len(xb), search_flops + len(xb) * net.sample_flops(s)
        f_now = net.argmax_flops()
        in_band = target - tol <= f_now <= target
        if bar is not None:
            bar.update(1)
            bar.set_postfix(flops=f"{f_now / f0:.3f}", tau=f"{tau:.2f}", ce=f"{ce.item():.3f}")
        if (step + 1) % every == 0 or step == steps - 1:
            # genotype checkpoint (the official code keeps one per epoch and picks the best in tolerance)
            ratios, depths = net.chosen()
            point = {"step": step, "flops_ratio": f_now / f0, "in_band": in_band, "accuracy": None,
                     "decisions": net.decisions(), "group_ratios": ratios, "stage_depths": depths}
            if in_band and args.select == "best-in-band" and len(xe):
                point["accuracy"] = argmax_accuracy(net, xe, ye, info, normalize)
                search_flops += len(xe) * f_now / 3  # a forward pass is about a third of a training pass
                if best is None or point["accuracy"] >= best["accuracy"]:
                    best = point
            checkpoints.append(point)
        if step % args.log_every == 0 or step == steps - 1:
            row = {"step": step, "tau": tau, "lr": sched.get_last_lr()[0], "weight_ce": w_loss.item(),
                   "arch_ce": ce.item(), "cost": cost.item(), "expected_flops_ratio": expected.item() / f0,
                   "argmax_flops_ratio": f_now / f0, "in_band": in_band,
                   "widths": net.chosen()[0], "depths": net.chosen()[1]}
            log.append(row)
            if on_log:
                on_log(row)
    if bar is not None:
        bar.close()
    net.eval()
    chosen = best if best is not None else checkpoints[-1]
    arch = apply_decisions(net.arch, chosen["decisions"], net.min_width)
    return SearchResult(net, chosen["decisions"], arch, chosen["group_ratios"], chosen["stage_depths"],
                        chosen["step"], chosen["accuracy"], [{k: v for k, v in c.items() if k != "decisions"}
                                                             for c in checkpoints],
                        log, steps, images, half, search_flops, time.perf_counter() - start,
                        target - tol <= arch.flops <= target, arch.flops / f0)


# ---------------------------------------------------------------------------- final training (optional)
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
            temperature: float) -> torch.Tensor:
    """TAS's final-training loss: (1 - a) CE + a T^2 KL(softmax(z_t / T) || softmax(z_s / T))."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, -1), F.softmax(teacher_logits / temperature, -1),
                  reduction="batchmean")
    return (1 - alpha) * F.cross_entropy(student_logits, labels) + alpha * temperature**2 * kl


def train_final(arch: Architecture, teacher: nn.Module, data: Dataset, args: Args, device) -> dict:
    """Train ``arch`` from scratch with KD from ``teacher`` (the paper's final training)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        student = build(arch, device)
    x, y = data.subset("train", args.train_images or None, seed=args.seed)
    steps = args.final_epochs * max(1, len(x) // args.final_batch_size)
    opt = torch.optim.SGD(student.parameters(), lr=args.final_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(args.seed)
    teacher.eval()
    for _ in range(args.final_epochs):
        student.train()
        for xb, yb in batches(x, y, args.final_batch_size, shuffle=True, generator=gen, augment=args.augment,
                              info=data.info, normalize=data.normalize, drop_last=len(x) > args.final_batch_size):
            with torch.no_grad():
                t_logits = teacher(xb)
            loss = kd_loss(student(xb), t_logits, yb, args.kd_alpha, args.kd_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    student.eval()
    return {"final_accuracy": accuracy(student, data, *data.split("val")),
            "final_test_accuracy": accuracy(student, data, *data.split("test")),
            "final_epochs": args.final_epochs,
            "final_student_epochs": args.final_epochs * len(x) / len(data.train_idx),
            "final_seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------- the agent
def actions_for(decisions: Sequence[float | None], ratios: Sequence[float]) -> list[int]:
    """The env's ``stage="joint"`` actions (ratio index, or len(ratios) = remove) for ``decisions``."""
    return [len(ratios) if d is None else list(ratios).index(d) for d in decisions]


def make_searchable(teacher_arch: Architecture, args: Args, teacher: Network | None = None,
                    min_width: int = MIN_WIDTH, device="cpu") -> SearchableNetwork:
    """The searchable network of ``teacher_arch``, initialised as ``args.init`` says."""
    with torch.random.fork_rng(devices=[]):  # the same initialisation whatever ran before
        torch.manual_seed(args.seed)
        net = SearchableNetwork(teacher_arch, args.ratio_list(), min_width, args.search_depth)
    if args.init == "teacher":
        if teacher is None:
            raise ValueError("--init teacher needs the teacher's weights")
        net.load_teacher(teacher)
    elif args.init != "random":
        raise ValueError(f"--init must be teacher or random, got {args.init!r}")
    return net.to(device)


def result_record(info: dict, result: SearchResult, args: Args, train_split: int, protocol=None,
                  final: dict | None = None) -> dict:
    """The env's terminal info of the derived student (like an RL agent's best) plus the
    search's figures and its compute: ``search_epochs`` (passes over the weight half, the
    paper's unit), ``relative_cost`` (FLOPs per image of the sampled networks / the
    student's), ``student_epochs`` = images through the search x relative cost / training
    split size (= search epochs x 2 x half size / split size x relative cost)."""
    net = result.network
    student_flops = max(result.architecture.flops, 1)
    student_epochs = result.search_flops / (student_flops * train_split)
    eval_epochs = evaluation_epochs(protocol, train_split) if protocol else 0.0
    extra = {
        "agent": "tas", "evaluation": 0, "stage": "tas", "seed": args.seed,
        "target_flops_ratio": args.flops_ratio, "tolerance": args.tolerance,
        "flops_ratio": result.flops_ratio, "in_band": result.in_band,
        "decisions": result.decisions, "group_ratios": result.group_ratios, "stage_depths": result.stage_depths,
        "select": args.select, "selected_step": result.selected_step, "selected_accuracy": result.selected_accuracy,
        "checkpoints": len(result.checkpoints),
        "in_band_checkpoints": sum(c["in_band"] for c in result.checkpoints),
        "search_steps": result.steps, "search_images": result.images, "search_seconds": result.seconds,
        "search_flops": result.search_flops,
        "search_epochs": result.images / 2 / result.half_images,
        "relative_cost": result.search_flops / max(result.images, 1) / student_flops,
        "student_epochs": student_epochs,
        "teacher_epochs": result.search_flops / (net.teacher_flops * train_split),
        "evaluation_student_epochs": eval_epochs,
        "total_student_epochs": student_epochs + eval_epochs + (final or {}).get("final_student_epochs", 0.0),
        "tas_args": dataclasses.asdict(args),
        **(final or {}),
    }
    return student_record(info, **extra)


def evaluation_epochs(protocol, train_split: int) -> float:
    """Student epochs (passes over the training split) of one evaluation under ``protocol``."""
    return protocol.epochs * min(protocol.train_images or train_split, train_split) / train_split


def steps_for_budget(net: SearchableNetwork, args: Args, student_epochs: float, train_split: int,
                     samples: int = 64) -> int:
    """Search steps whose compute is about ``student_epochs`` student-epoch equivalents,
    taking the student at the target FLOPs and a pass at the mean FLOPs of networks
    sampled from the initial distributions (short searches barely move them)."""
    gen = torch.Generator().manual_seed(args.seed + 7919)
    with torch.no_grad():
        draws = [net.sample_flops(net.sample(args.tau_max, args.num_sampled, gen)) for _ in range(samples)]
    per_image = sum(draws) / samples
    per_step = 2 * args.batch_size * per_image
    return max(1, round(student_epochs * args.flops_ratio * net.teacher_flops * train_split / per_step))


class TAS:
    """The whole pipeline on one env: search, derive, replay in the env, optional final
    training. ``run()`` returns the record (also kept as ``self.best``)."""

    def __init__(self, args: Args, on_log: Callable[[dict], None] | None = None,
                 wrap_env: Callable[[gym.Env], gym.Env] | None = None):
        self.args, self.on_log, self.wrap_env = args, on_log, wrap_env
        self.best: dict | None = None
        self.result: SearchResult | None = None

    def make_env(self) -> gym.Env:
        kwargs: dict[str, Any] = {"protocol": self.args.protocol, "device": self.args.device,
                                  **self.args.env_kwargs, "stage": "joint", "ratios": self.args.ratio_list()}
        if kwargs.get("start_architecture") is not None:
            raise ValueError("TAS searches the teacher itself: start_architecture is not supported")
        return gym.make(self.args.env_id, **kwargs)

    def run(self) -> dict:
        args = self.args
        env = self.make_env()
        try:
            base = env.unwrapped
            teacher, data = base.teacher, base.evaluator.data
            device = base.evaluator.device
            net = make_searchable(base.start_architecture, args, teacher.module, base.min_width, device)
            x, y = data.subset("train", args.train_images or None, seed=args.seed)
            search_args = args
            if args.budget_evaluations > 0:
                epochs = max(args.budget_evaluations - 1, 0) * evaluation_epochs(base.protocol, len(data.train_idx))
                steps = steps_for_budget(net, args, epochs, len(data.train_idx))
                search_args = dataclasses.replace(args, steps=steps)
            self.result = result = search(net, x, y, data.info, search_args, data.normalize, self.on_log)
            actions = actions_for(result.decisions, base.ratios)
            replayed = base.student_architecture(actions)
            if replayed.canonical_hash() != result.architecture.canonical_hash():
                raise RuntimeError("the env's student differs from the derived architecture")  # a bug, not a user error
            scored = self.wrap_env(env) if self.wrap_env else env
            scored.reset(seed=args.seed)
            info: dict = {}
            for a in actions:
                *_, info = scored.step(a)
            final = None
            if args.final_epochs > 0:
                final = train_final(result.architecture, teacher.module, data, args, device)
            self.best = result_record(info, result, args, len(data.train_idx), base.protocol, final)
            return self.best
        finally:
            env.close()


# ---------------------------------------------------------------------------- benchmark runner adapter
#: Args fields the runner sets itself
_RUNNER_SKIP = ("env_id", "env_kwargs", "protocol", "seed", "device", "out", "progress")


def run_benchmark(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None,
                  *, tracker=None, wandb_run: Any = None) -> dict:
    """TAS as an agent of ``n2n_gym.bench.runner`` (``register_agent("tas", "n2n_gym.agents.tas:run_benchmark")``).

    ``budget`` (student evaluations of an RL agent) becomes the search's compute
    (``Args.budget_evaluations``) unless ``hparams`` fix ``steps`` or ``epochs``; the derived
    student is TAS's one evaluation, fed to ``tracker`` through ``TrackedEnv``. Other
    hparams are fields of :class:`Args`."""
    from n2n_gym.envs.wrappers import (
        BudgetTracker,
        BudgetWrapper,
        private_cache,
        resolve_device,
    )

    tracker = tracker or BudgetTracker(budget)
    hparams = dict(hparams or {})
    fields = {f.name for f in dataclasses.fields(Args)}
    bad = (set(hparams) - fields) | (set(hparams) & set(_RUNNER_SKIP))
    if bad:
        raise ValueError(f"tas hparams must be fields of agents.tas.Args other than {_RUNNER_SKIP}; got {sorted(bad)}")
    if not {"steps", "epochs", "budget_evaluations"} & set(hparams):
        hparams["budget_evaluations"] = budget
    with private_cache(env_kwargs) as kwargs:
        protocol = kwargs.pop("protocol", None)
        device = kwargs.pop("device", "auto")
        for k in ("progress", "stage", "ratios"):
            kwargs.pop(k, None)
        args = Args(env_id=env_id, env_kwargs=kwargs, protocol=protocol, seed=seed, device=device, progress=False,
                    **hparams)
        tracker.device = resolve_device(device)
        tas = TAS(args, wrap_env=lambda env: BudgetWrapper(env, tracker))
        record = tas.run()
    keep = ("flops_ratio", "target_flops_ratio", "in_band", "search_steps", "search_seconds", "student_epochs",
            "teacher_epochs", "total_student_epochs", "selected_step", "selected_accuracy", "in_band_checkpoints",
            "checkpoints", "final_accuracy", "final_test_accuracy")
    hp = {k: v for k, v in dataclasses.asdict(args).items() if k not in _RUNNER_SKIP}
    return {"hparams": hp, "tracker": tracker, "extra": {"tas": {k: record[k] for k in keep if k in record}}}


# ---------------------------------------------------------------------------- script
def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m n2n_gym.agents.tas", description=__doc__.split("\n\n")[0])
    add_args(parser, Args)
    ns = parser.parse_args(argv)
    return args_or_exit(parser, Args, vars(ns))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out) if args.out else None
    log_file = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "search_log.jsonl", "w")

    def on_log(row: dict) -> None:
        if log_file:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()

    start = time.perf_counter()
    try:
        record = TAS(args, on_log).run()
    finally:
        if log_file:
            log_file.close()
    if out:
        (out / "record.json").write_text(json.dumps(record, indent=1))
    print(f"TAS in {time.perf_counter() - start:.1f} s: reward {record['reward']:.4f}, val acc "
          f"{record['accuracy']:.4f} (teacher {record['teacher_accuracy']:.4f}), {record['params']:,} params "
          f"({record['compression']:.2f}x smaller), FLOPs ratio {record['flops_ratio']:.3f} (target "
          f"{args.flops_ratio}, band [{args.flops_ratio - args.tolerance:.2f}, {args.flops_ratio:.2f}]: "
          f"{'in' if record['in_band'] else 'out'}); search {record['student_epochs']:.1f} student-epoch equivalents")
    if "final_accuracy" in record:
        print(f"final KD training ({args.final_epochs} epochs): val acc {record['final_accuracy']:.4f}, "
              f"test acc {record['final_test_accuracy']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
