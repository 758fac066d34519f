"""n2n_gym.ir.arch: analytic params/FLOPs vs measured ones, JSON round trip / canonical hash,
malformed architectures."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import CIFAR_SHAPE, DIGITS_SHAPE, measured, zoo_arch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from n2n_gym.ir.zoo import TEACHERS


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


def _check_counts(arch: Architecture, decisions, min_width: int) -> None:
    try:
        student = apply_decisions(arch, decisions, min_width)
    except InvalidStudent as exc:
        assert str(exc)
        return
    params, flops, out = measured(student)
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
    arch = zoo_arch(name)

    @settings(max_examples=examples, **_SETTINGS)
    @given(legal_decisions(arch))
    def check(drawn):
        _check_counts(arch, *drawn)

    check()


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_json_round_trip_and_hash(name: str) -> None:
    arch = zoo_arch(name)
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
    assert zoo_arch("digitsnet").canonical_hash() == "027099539baae2a1eb79f61ca1402972cc1474d264c2c97de14f3557afd98c1a"
    assert zoo_arch("resnet20").canonical_hash() == "027a36424e7c07d424c532d79c6f3bd011e6a876b4a8b940ffe95eee204a36e9"
    d = json.loads(zoo_arch("digitsnet").to_json())
    assert set(d) == {"ir_version", "name", "input_shape", "num_classes", "layers"}


def test_hash_excludes_name_but_sees_widths_and_origins() -> None:
    arch = zoo_arch("resnet20")
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
    assert zoo_arch("resnet20", 100).canonical_hash() != arch.canonical_hash()


@settings(max_examples=40, **_SETTINGS)
@given(legal_decisions(zoo_arch("resnet20")))
def test_student_json_round_trip(drawn) -> None:
    arch = zoo_arch("resnet20")
    try:
        student = apply_decisions(arch, *drawn)
    except InvalidStudent:
        return
    back = Architecture.from_json(student.to_json())
    assert back == student and back.canonical_hash() == student.canonical_hash()
    assert (back.params, back.flops) == (student.params, student.flops)


def test_from_dict_errors() -> None:
    d = json.loads(zoo_arch("digitsnet").to_json())
    with pytest.raises(ArchitectureError, match="version"):
        Architecture.from_dict({**d, "ir_version": 99})
    with pytest.raises(ArchitectureError):
        Architecture.from_dict({k: v for k, v in d.items() if k != "layers"})
    bad = json.loads(json.dumps(d))
    bad["layers"][0]["colour"] = "red"
    with pytest.raises(ArchitectureError):
        Architecture.from_dict(bad)


def _replace_layer(arch: Architecture, i: int, **changes) -> Architecture:
    layers = list(arch.layers)
    layers[i] = dataclasses.replace(layers[i], **changes)
    return dataclasses.replace(arch, layers=tuple(layers))


def test_block_widths_must_agree() -> None:
    arch = zoo_arch("resnet20")
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
    arch = zoo_arch("digitsnet")
    bad = dataclasses.replace(arch, layers=arch.layers[:-1] + (last,))
    with pytest.raises(ArchitectureError, match="last layer"):
        bad.shapes()


def test_other_malformed_architectures() -> None:
    with pytest.raises(ArchitectureError, match="at least one layer"):
        Architecture(DIGITS_SHAPE, 10, ()).shapes()
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
    split = Architecture(CIFAR_SHAPE, 10, (
        Layer(CONV, 8, 3, 1, 1, False, 0, BODY), Layer(CONV, 8, 3, 1, 1), Layer(CONV, 8, 3, 1, 1, False, 0, BODY),
    ) + head)
    with pytest.raises(ArchitectureError, match="contiguous"):
        split.shapes()
    # a block ending with ReLU (it belongs after the addition)
    relu_tail = Architecture(CIFAR_SHAPE, 10, (Layer(CONV, 3, 3, 1, 1, True, 0, BODY),) + head)
    with pytest.raises(ArchitectureError, match="relu"):
        relu_tail.shapes()
    # a block with only a shortcut, two shortcuts, a non-conv layer in a block
    with pytest.raises(ArchitectureError, match="no body"):
        Architecture(CIFAR_SHAPE, 10, (Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT),) + head).shapes()
    two_sc = (Layer(CONV, 8, 3, 1, 1, False, 0, BODY), Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT),
              Layer(CONV, 8, 1, 1, 0, False, 0, SHORTCUT))
    with pytest.raises(ArchitectureError, match="more than one shortcut"):
        Architecture(CIFAR_SHAPE, 10, two_sc + head).shapes()
    # too many downsamplings for the input
    pools = tuple(Layer(MAXPOOL, kernel=2, stride=2) for _ in range(4))
    with pytest.raises(ArchitectureError, match="nothing"):
        Architecture(DIGITS_SHAPE, 10, (Layer(CONV, 4, 3, 1, 1),) + pools + head).shapes()


def test_table_lists_every_layer() -> None:
    arch = zoo_arch("resnet20")
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
        _replace_layer(zoo_arch("digitsnet"), index, **changes).shapes()
