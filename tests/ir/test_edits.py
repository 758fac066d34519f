"""n2n_gym.ir.edits: decision sequences (removal, shrinking, tied residual widths, the min-width
floor) and the channel groups of the residual rules."""

from __future__ import annotations

import pytest
import torch
from conftest import CIFAR_SHAPE, make_digits_env, measured, reference_spaces, zoo_arch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from n2n_gym.ir.arch import (
    BODY,
    CONV,
    GAP,
    LINEAR,
    SHORTCUT,
    Architecture,
    Layer,
)
from n2n_gym.ir.build import build
from n2n_gym.ir.edits import (
    InvalidStudent,
    apply_decisions,
    channel_groups,
    layer_rules,
    producers,
    shrunk_width,
)
from n2n_gym.ir.zoo import teacher_architecture


@st.composite
def any_decisions(draw, arch: Architecture):
    """Anything of the right length: removal of any layer (one in ten), any ratio in (0, 1]."""
    out = []
    for _ in arch.layers:
        remove = draw(st.integers(min_value=0, max_value=9)) == 0
        out.append(None if remove else draw(st.floats(min_value=1e-6, max_value=1.0)))
    return out, draw(st.integers(min_value=1, max_value=16))


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name, examples", [("digitsnet", 100), ("resnet20", 60), ("vgg11", 20)])
def test_every_decision_sequence_builds_or_is_invalid_with_reason(name: str, examples: int) -> None:
    arch = zoo_arch(name)

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
    arch = zoo_arch("digitsnet")
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
        arch = zoo_arch(name)
        assert apply_decisions(arch, [1.0] * len(arch)) == arch


def test_resnet_identity_block_removal_and_tied_widths() -> None:
    arch = zoo_arch("resnet20")
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
    params, flops, _ = measured(student)
    assert (params, flops) == (student.params, student.flops)
    # a projection block's first body layer has stride 2: never removable
    proj_block = next(b for b, idx in blocks.items() if any(arch.layers[k].role == SHORTCUT for k in idx))
    first = blocks[proj_block][0]
    with pytest.raises(InvalidStudent, match=f"layer {first}"):
        apply_decisions(arch, [None if k == first else 1.0 for k in range(len(arch))])


def test_projection_block_cannot_lose_its_whole_body() -> None:
    arch = Architecture(CIFAR_SHAPE, 10, (
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
    params, flops, _ = measured(student)
    assert (params, flops) == (student.params, student.flops)


def test_min_width_floor() -> None:
    arch = zoo_arch("digitsnet")
    student = apply_decisions(arch, [0.01] * len(arch))
    widths = [l.out for l in student.layers if l.kind == CONV]
    assert widths == [10] * 5  # N2N's floor of 10
    student = apply_decisions(arch, [0.5] * len(arch))
    assert [l.out for l in student.layers if l.kind == CONV] == [16, 16, 32, 32, 64]




@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet56", "digitsnet", "vgg16"])
def test_channel_groups_follow_the_residual_rules(name: str) -> None:
    arch = zoo_arch(name)
    group, source = reference_spaces(arch)
    lib_groups, lib_prod = channel_groups(arch), producers(arch)
    for i in group:
        assert lib_groups[i] == group[i], i
        expected_source = -1 if source[i] == "image" else source[i]
        # the library names the producing layer; its space must be the reference's
        assert (lib_prod[i] == -1) == (expected_source == -1), i
        if expected_source != -1:
            assert lib_groups[lib_prod[i]] == expected_source, i


# ---------------------------------------------------------------------------- A: checked at gym.make
def test_min_width_zero_is_refused_at_make_and_widths_never_reach_zero():
    with pytest.raises(ValueError, match="min_width must be >= 1, got 0"):
        make_digits_env(stage="shrink", min_width=0, ratios=(0.01, 1.0))
    assert shrunk_width(32, 0.01, 0) == 1 and shrunk_width(32, 0.01, 1) == 1 and shrunk_width(5, 1.0, 10) == 5
    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    student = apply_decisions(arch, [0.01] * len(arch), min_width=0)  # the edit itself floors at 1
    assert min(l.out for l in student.layers if l.has_weights) >= 1
