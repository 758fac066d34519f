"""The architecture IR: zoo counts, analytic params/FLOPs vs measured ones, decision
sequences, JSON round trip / canonical hash, malformed architectures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from n2n_gym.ir.arch import (
    BODY,
    CONV,
    GAP,
    LINEAR,
    MAXPOOL,
    SHORTCUT,
    Architecture,
    ArchitectureError,
    Layer,
)
from n2n_gym.ir.build import build
from n2n_gym.ir.edits import InvalidStudent, apply_decisions, layer_rules
from n2n_gym.ir.zoo import TEACHERS, teacher_architecture

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)


def _shape(name: str) -> tuple[int, int, int]:
    return DIGITS if name == "digitsnet" else CIFAR


def _zoo(name: str, num_classes: int = 10) -> Architecture:
    return teacher_architecture(name, _shape(name), num_classes)


def _measured(arch: Architecture) -> tuple[int, int, torch.Tensor]:
    """(sum of parameter numels, FlopCounterMode FLOPs of a 1-image forward, logits)."""
    torch.manual_seed(0)
    module = build(arch).eval()
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = module(torch.randn(1, *arch.input_shape))
    return params, counter.get_total_flops(), out


# ----------------------------------------------------------------------------- the zoo

# Independent figures: ResNet-18/34 are the usual CIFAR counts (kuangliu/pytorch-cifar);
# the VGGs are kuangliu's counts minus the conv biases (a BN follows every conv here);
# ResNet-20/56 are TAS' option-A counts plus the two 1x1 projection shortcuts (2,752).
ZOO_PARAMS_10_CLASSES = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet20": 272_474,
    "resnet56": 855_770,
    "vgg11": 9_228_362,
    "vgg13": 9_413_066,
    "vgg16": 14_724_042,
    "vgg19": 20_035_018,
    "digitsnet": 140_458,
}


def test_zoo_covers_every_teacher() -> None:
    assert set(ZOO_PARAMS_10_CLASSES) == set(TEACHERS)


@pytest.mark.parametrize("name", sorted(ZOO_PARAMS_10_CLASSES))
def test_zoo_param_counts_exact(name: str) -> None:
    arch = _zoo(name)
    assert arch.params == ZOO_PARAMS_10_CLASSES[name]
    params, flops, out = _measured(arch)
    assert params == arch.params
    assert flops == arch.flops
    assert out.shape == (1, 10)
    assert sum(arch.layer_params()) == arch.params and sum(arch.layer_flops()) == arch.flops


def test_resnet_flops_are_the_published_macs() -> None:
    # CIFAR ResNet-18 is 0.56 GMACs, ResNet-20 41 MMACs (2 FLOPs per MAC here)
    assert _zoo("resnet18").flops == 2 * 555_422_720
    assert _zoo("resnet20").flops == 2 * 40_813_184


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "digitsnet", "resnet20"])
def test_zoo_counts_for_100_classes(name: str) -> None:
    a10, a100 = _zoo(name, 10), _zoo(name, 100)
    in_features = a10.shapes()[-1].in_features
    assert a100.params - a10.params == 90 * (in_features + 1)
    assert a100.layers[-1].out == 100 and not a100.layers[-1].relu
    params, flops, _ = _measured(a100)
    assert (params, flops) == (a100.params, a100.flops)


def test_zoo_origins_and_unknown_name() -> None:
    for name in TEACHERS:
        arch = _zoo(name)
        assert [l.origin for l in arch.layers] == list(range(len(arch)))
        assert arch.name == name
    with pytest.raises(KeyError, match="resnet18"):
        teacher_architecture("resnet19")


# ------------------------------------------------------------ random decision sequences


@st.composite
def legal_decisions(draw, arch: Architecture):
    """Per layer: removal where allowed, else a width ratio in (0, 1]; and a min_width."""
    out = []
    for rule in layer_rules(arch):
        if rule.removable and draw(st.booleans()):
            out.append(None)
        else:
            out.append(draw(st.floats(min_value=0.01, max_value=1.0)))
    return out, draw(st.integers(min_value=1, max_value=16))


@st.composite
def any_decisions(draw, arch: Architecture):
    """Anything of the right length: removal of any layer (one in ten), any ratio in (0, 1]."""
    out = []
    for _ in arch.layers:
        remove = draw(st.integers(min_value=0, max_value=9)) == 0
        out.append(None if remove else draw(st.floats(min_value=1e-6, max_value=1.0)))
    return out, draw(st.integers(min_value=1, max_value=16))


def _check_counts(arch: Architecture, decisions, min_width: int) -> None:
    try:
        student = apply_decisions(arch, decisions, min_width)
    except InvalidStudent as exc:
        assert str(exc)
        return
    params, flops, out = _measured(student)
    assert params == student.params
    assert flops == student.flops
    assert out.shape == (1, arch.num_classes) and torch.isfinite(out).all()
    assert student.params <= arch.params and student.flops <= arch.flops
    assert student.layers[-1] == arch.layers[-1]
    # every kept layer's width respects the floor / the teacher width
    for layer in student.layers:
        teacher_layer = arch.layers[layer.origin]
        assert layer.kind == teacher_layer.kind
        if layer.kind in (CONV, LINEAR):
            assert 1 <= layer.out <= teacher_layer.out


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "name, examples",
    [("digitsnet", 100), ("resnet20", 60), ("vgg11", 25), ("resnet18", 8)],
)
def test_analytic_counts_equal_measured_for_random_students(name: str, examples: int) -> None:
    arch = _zoo(name)

    @settings(max_examples=examples, **_SETTINGS)
    @given(legal_decisions(arch))
    def check(drawn):
        _check_counts(arch, *drawn)

    check()


@pytest.mark.parametrize("name, examples", [("digitsnet", 100), ("resnet20", 60), ("vgg11", 20)])
def test_every_decision_sequence_builds_or_is_invalid_with_reason(name: str, examples: int) -> None:
    arch = _zoo(name)

    @settings(max_examples=examples, **_SETTINGS)
    @given(any_decisions(arch))
    def check(drawn):
        decisions, min_width = drawn
        try:
            student = apply_decisions(arch, decisions, min_width)
        except InvalidStudent as exc:
            assert str(exc).strip()
            return
        module = build(student).eval()
        with torch.no_grad():
            out = module(torch.randn(2, *arch.input_shape))
        assert out.shape == (2, arch.num_classes) and torch.isfinite(out).all()

    check()


def test_decision_errors() -> None:
    arch = _zoo("digitsnet")
    n = len(arch)
    with pytest.raises(ValueError, match="one decision per layer"):
        apply_decisions(arch, [1.0] * (n - 1))
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="width ratio"):
            apply_decisions(arch, [1.0, bad] + [1.0] * (n - 2))
    with pytest.raises(InvalidStudent, match="layer 0"):
        apply_decisions(arch, [None] + [1.0] * (n - 1))
    with pytest.raises(InvalidStudent, match=f"layer {n - 1}"):
        apply_decisions(arch, [1.0] * (n - 1) + [None])


def test_all_keep_is_the_teacher() -> None:
    for name in ("digitsnet", "resnet20", "vgg11", "resnet18"):
        arch = _zoo(name)
        assert apply_decisions(arch, [1.0] * len(arch)) == arch


def test_resnet_identity_block_removal_and_tied_widths() -> None:
    arch = _zoo("resnet20")
    blocks = arch.blocks()
    decisions = [1.0] * len(arch)
    for k in blocks[0]:  # both body layers of the first (identity) block
        decisions[k] = None
    decisions[0] = 0.5  # the stem: the whole first stage follows it
    student = apply_decisions(arch, decisions, min_width=1)
    assert len(student) == len(arch) - 2
    assert len(student.blocks()) == len(blocks) - 1
    stage0 = [l for l in student.layers if l.kind == CONV and l.origin in (0, 4, 6)]
    assert [l.out for l in stage0] == [8, 8, 8]  # stem and identity-block tails tied
    params, flops, _ = _measured(student)
    assert (params, flops) == (student.params, student.flops)
    # a projection block's first body layer has stride 2: never removable
    proj_block = next(b for b, idx in blocks.items() if any(arch.layers[k].role == SHORTCUT for k in idx))
    first = blocks[proj_block][0]
    with pytest.raises(InvalidStudent, match=f"layer {first}"):
        apply_decisions(arch, [None if k == first else 1.0 for k in range(len(arch))])


def test_projection_block_cannot_lose_its_whole_body() -> None:
    arch = Architecture(CIFAR, 10, (
        Layer(CONV, 8, 3, 1, 1, origin=0),
        Layer(CONV, 16, 3, 1, 1, True, 0, BODY, origin=1),
        Layer(CONV, 16, 3, 1, 1, False, 0, BODY, origin=2),
        Layer(CONV, 16, 1, 1, 0, False, 0, SHORTCUT, origin=3),
        Layer(GAP, origin=4), Layer(LINEAR, out=10, relu=False, origin=5),
    ))
    assert [r.removable for r in layer_rules(arch)] == [False, True, True, False, False, False]
    with pytest.raises(InvalidStudent, match="projection shortcut"):
        apply_decisions(arch, [1.0, None, None, 1.0, 1.0, 1.0])
    # one body layer left (shrunk to 8): the projection shortcut takes its width
    student = apply_decisions(arch, [1.0, None, 0.5, 1.0, 1.0, 1.0], min_width=1)
    assert [l.out for l in student.layers[:3]] == [8, 8, 8]
    params, flops, _ = _measured(student)
    assert (params, flops) == (student.params, student.flops)


def test_min_width_floor() -> None:
    arch = _zoo("digitsnet")
    student = apply_decisions(arch, [0.01] * len(arch))
    widths = [l.out for l in student.layers if l.kind == CONV]
    assert widths == [10] * 5  # N2N's floor of 10
    student = apply_decisions(arch, [0.5] * len(arch))
    assert [l.out for l in student.layers if l.kind == CONV] == [16, 16, 32, 32, 64]


# --------------------------------------------------------------- JSON and the hash


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_json_round_trip_and_hash(name: str) -> None:
    arch = _zoo(name)
    back = Architecture.from_json(arch.to_json())
    assert back == arch and back.name == arch.name
    assert back.canonical_hash() == arch.canonical_hash()
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    assert back.to_json() == arch.to_json()
    # the hash is stable across processes: a pure function of the canonical JSON
    assert len(arch.canonical_hash()) == 64


def test_hash_is_pinned() -> None:
    # Pinned values: the hash keys every cached result and teacher, so a change in the
    # serialisation must be deliberate (with an IR_VERSION / EVAL_VERSION bump).
    assert _zoo("digitsnet").canonical_hash() == "027099539baae2a1eb79f61ca1402972cc1474d264c2c97de14f3557afd98c1a"
    assert _zoo("resnet20").canonical_hash() == "027a36424e7c07d424c532d79c6f3bd011e6a876b4a8b940ffe95eee204a36e9"
    d = json.loads(_zoo("digitsnet").to_json())
    assert set(d) == {"ir_version", "name", "input_shape", "num_classes", "layers"}


def test_hash_excludes_name_but_sees_widths_and_origins() -> None:
    arch = _zoo("resnet20")
    renamed = dataclasses.replace(arch, name="something else")
    assert renamed == arch and renamed.canonical_hash() == arch.canonical_hash()
    layers = list(arch.layers)
    layers[1] = dataclasses.replace(layers[1], out=15)
    wider = dataclasses.replace(arch, layers=tuple(layers))
    assert wider != arch and wider.canonical_hash() != arch.canonical_hash()
    layers = list(arch.layers)
    layers[3] = dataclasses.replace(layers[3], origin=1)
    moved = dataclasses.replace(arch, layers=tuple(layers))
    assert moved.canonical_hash() != arch.canonical_hash()
    assert _zoo("resnet20", 100).canonical_hash() != arch.canonical_hash()


@settings(max_examples=40, **_SETTINGS)
@given(legal_decisions(_zoo("resnet20")))
def test_student_json_round_trip(drawn) -> None:
    arch = _zoo("resnet20")
    try:
        student = apply_decisions(arch, *drawn)
    except InvalidStudent:
        return
    back = Architecture.from_json(student.to_json())
    assert back == student and back.canonical_hash() == student.canonical_hash()
    assert (back.params, back.flops) == (student.params, student.flops)


def test_from_dict_errors() -> None:
    d = json.loads(_zoo("digitsnet").to_json())
    with pytest.raises(ArchitectureError, match="version"):
        Architecture.from_dict({**d, "ir_version": 99})
    with pytest.raises(ArchitectureError):
        Architecture.from_dict({k: v for k, v in d.items() if k != "layers"})
    bad = json.loads(json.dumps(d))
    bad["layers"][0]["colour"] = "red"
    with pytest.raises(ArchitectureError):
        Architecture.from_dict(bad)


# --------------------------------------------------------------- malformed architectures


def _replace_layer(arch: Architecture, i: int, **changes) -> Architecture:
    layers = list(arch.layers)
    layers[i] = dataclasses.replace(layers[i], **changes)
    return dataclasses.replace(arch, layers=tuple(layers))


def test_block_widths_must_agree() -> None:
    arch = _zoo("resnet20")
    tail = arch.blocks()[0][-1]  # last body layer of an identity block
    bad = _replace_layer(arch, tail, out=8)
    with pytest.raises(ArchitectureError, match="residual block"):
        bad.shapes()
    with pytest.raises(ArchitectureError):
        bad.params
    with pytest.raises(ArchitectureError):
        build(bad)
    # a projection shortcut whose width differs from its body's
    sc = next(i for i, l in enumerate(arch.layers) if l.role == SHORTCUT)
    with pytest.raises(ArchitectureError, match="shortcut"):
        _replace_layer(arch, sc, out=7).shapes()
    # ... or whose stride differs
    with pytest.raises(ArchitectureError):
        _replace_layer(arch, sc, stride=1).shapes()


@pytest.mark.parametrize(
    "last",
    [
        Layer(CONV, out=10, kernel=1),
        Layer(LINEAR, out=9, relu=False),
        Layer(LINEAR, out=10, relu=True),
        Layer(GAP),
    ],
)
def test_bad_last_layer(last: Layer) -> None:
    arch = _zoo("digitsnet")
    bad = dataclasses.replace(arch, layers=arch.layers[:-1] + (last,))
    with pytest.raises(ArchitectureError, match="last layer"):
        bad.shapes()


def test_other_malformed_architectures() -> None:
    with pytest.raises(ArchitectureError, match="at least one layer"):
        Architecture(DIGITS, 10, ()).shapes()
    with pytest.raises(ArchitectureError, match="unknown layer kind"):
        Layer("dense", out=3)
    with pytest.raises(ArchitectureError, match="out >= 1"):
        Layer(CONV, out=0)
    with pytest.raises(ArchitectureError, match="role"):
        Layer(CONV, out=4, block=0)
    with pytest.raises(ArchitectureError, match="role"):
        Layer(CONV, out=4, role="torso", block=0)
    head = (Layer(GAP), Layer(LINEAR, out=10, relu=False))
    # a block that is not contiguous
    split = Architecture(CIFAR, 10, (
        Layer(CONV, 8, 3, 1, 1, False, 0, BODY), Layer(CONV, 8, 3, 1, 1), Layer(CONV, 8, 3, 1, 1, False, 0, BODY),
    ) + head)
    with pytest.raises(ArchitectureError, match="contiguous"):
        split.shapes()
    # a block ending with ReLU (it belongs after the addition)
    relu_tail = Architecture(CIFAR, 10, (Layer(CONV, 3, 3, 1, 1, True, 0, BODY),) + head)
    with pytest.raises(ArchitectureError, match="relu"):
        relu_tail.shapes()
    # a block with only a shortcut, two shortcuts, a non-conv layer in a block
    with pytest.raises(ArchitectureError, match="no body"):
        Architecture(CIFAR, 10, (Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT),) + head).shapes()
    two_sc = (Layer(CONV, 8, 3, 1, 1, False, 0, BODY), Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT),
              Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT))
    with pytest.raises(ArchitectureError, match="more than one shortcut"):
        Architecture(CIFAR, 10, two_sc + head).shapes()
    # too many downsamplings for the input
    pools = tuple(Layer(MAXPOOL, kernel=2, stride=2) for _ in range(4))
    with pytest.raises(ArchitectureError, match="nothing"):
        Architecture(DIGITS, 10, (Layer(CONV, 4, 3, 1, 1),) + pools + head).shapes()


def test_table_lists_every_layer() -> None:
    arch = _zoo("resnet20")
    table = arch.table()
    lines = table.splitlines()
    assert len(lines) == len(arch) + 2
    assert f"{arch.params:,}" in lines[-1] and f"{arch.flops:,}" in lines[-1]


@pytest.mark.parametrize(
    "index, changes",
    [(0, {"kernel": 0}), (0, {"stride": 0}), (0, {"padding": -1}), (2, {"padding": 2})],
    ids=["conv-kernel-0", "conv-stride-0", "conv-padding-neg", "pool-padding-too-big"],
)
def test_impossible_layer_geometry_is_an_architecture_error(index: int, changes: dict) -> None:
    with pytest.raises(ArchitectureError):  # when the layer is made, or at the latest in shapes()
        _replace_layer(_zoo("digitsnet"), index, **changes).shapes()
