"""Building modules from the IR and weight inheritance (teacher -> student)."""

from __future__ import annotations

import pytest
import torch
from conftest import reference_spaces, zoo_arch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from n2n_gym.ir.arch import CONV, LINEAR, Architecture
from n2n_gym.ir.build import Network, build, inherit_weights
from n2n_gym.ir.edits import (
    InvalidStudent,
    apply_decisions,
    channel_groups,
    layer_rules,
    producers,
)

_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@torch.no_grad()
def random_teacher(arch: Architecture, seed: int = 0) -> Network:
    """A teacher with seeded random weights and randomised BatchNorm statistics (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build(arch)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return net.eval()


def student_of(teacher: Network, decisions, min_width: int = 10) -> Network:
    torch.manual_seed(123)
    student = build(apply_decisions(teacher.arch, decisions, min_width))
    return inherit_weights(student, teacher).eval()


def _inputs(arch: Architecture, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *arch.input_shape, generator=torch.Generator().manual_seed(7))


def conv(net: Network, i: int) -> nn.Conv2d:
    return net.layers[i][0]


def bn(net: Network, i: int) -> nn.BatchNorm2d:
    return net.layers[i][1]


def l1(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().reshape(weight.shape[0], -1).sum(1)


@pytest.mark.parametrize("name", ["digitsnet", "resnet20", "vgg11"])
def test_build_structure(name: str) -> None:
    arch = zoo_arch(name)
    net = build(arch)
    assert isinstance(net, Network) and net.arch == arch
    assert len(net.layers) == len(arch)
    for layer, shape, module in zip(arch.layers, arch.shapes(), net.layers):
        if layer.kind == CONV:
            c, b = module[0], module[1]
            assert (c.in_channels, c.out_channels, c.kernel_size) == (shape.in_channels, layer.out, (layer.kernel,) * 2)
            assert c.bias is None and b.num_features == layer.out
            assert isinstance(module[-1], nn.ReLU) == layer.relu
        elif layer.kind == LINEAR:
            assert (module[1].in_features, module[1].out_features) == (shape.in_features, layer.out)
    out = net.eval()(_inputs(arch, 3))
    assert out.shape == (3, 10)


def test_build_forward_matches_a_hand_written_resnet_block() -> None:
    arch = zoo_arch("resnet20")
    net = random_teacher(arch)
    x = _inputs(arch, 2)
    with torch.no_grad():
        h = net.layers[0](x)
        for kind, *rest in arch.segments()[1:]:
            if kind == "layer":
                h = net.layers[rest[0]](h)
            else:
                body, sc = rest
                idt = h if sc is None else net.layers[sc](h)
                for k in body:
                    h = net.layers[k](h)
                h = torch.relu(h + idt)
        torch.testing.assert_close(net(x), h, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["digitsnet", "resnet20", "vgg11"])
def test_all_keep_student_reproduces_teacher_exactly(name: str) -> None:
    arch = zoo_arch(name)
    teacher = random_teacher(arch, seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_of(teacher, [1.0] * len(arch))
    assert student.arch == arch
    x = _inputs(arch)
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))
    s_state = student.state_dict()
    for k, v in teacher.state_dict().items():
        assert torch.equal(s_state[k], v), k
        assert torch.equal(before[k], v), f"inheritance modified the teacher's {k}"


def test_shrunk_plain_layer_keeps_largest_l1_channels() -> None:
    arch = zoo_arch("digitsnet")
    teacher = random_teacher(arch, seed=2)
    decisions = [1.0] * len(arch)
    decisions[1] = 0.5  # conv 32 -> 16
    student = student_of(teacher, decisions)
    assert conv(student, 1).out_channels == 16
    idx = torch.topk(l1(conv(teacher, 1).weight), 16).indices.sort().values
    assert torch.equal(conv(student, 1).weight, conv(teacher, 1).weight[idx])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn(student, 1), name), getattr(bn(teacher, 1), name)[idx]), name
    # the consumer (after the max-pool) reads exactly those channels
    assert torch.equal(conv(student, 3).weight, conv(teacher, 3).weight[:, idx])
    # and the unchanged layers are copied as they are
    assert torch.equal(conv(student, 0).weight, conv(teacher, 0).weight)
    assert torch.equal(conv(student, 4).weight, conv(teacher, 4).weight)


def test_shrunk_residual_group_chosen_once_by_summed_l1() -> None:
    arch = zoo_arch("resnet20")
    teacher = random_teacher(arch, seed=3)
    groups = channel_groups(arch)
    stem_group = [i for i, g in enumerate(groups) if g == 0 and arch.layers[i].kind == CONV]
    assert stem_group == [0, 2, 4, 6]  # the stem and the identity-block tails of stage 0
    decisions = [1.0] * len(arch)
    decisions[0] = 0.5
    student = student_of(teacher, decisions, min_width=1)
    score = sum(l1(conv(teacher, i).weight) for i in stem_group)
    idx = torch.topk(score, 8).indices.sort().values
    for i in stem_group:  # the same channels everywhere in the tied group
        assert torch.equal(conv(student, i).weight, conv(teacher, i).weight[idx])
        assert torch.equal(bn(student, i).running_mean, bn(teacher, i).running_mean[idx])
    prod = producers(arch)
    consumers = [i for i, p in enumerate(prod) if p in stem_group and arch.layers[i].kind == CONV]
    assert consumers == [1, 3, 5, 7, 9]  # body heads of stage 0, stage 1's first conv and projection
    for i in consumers:
        assert torch.equal(conv(student, i).weight, conv(teacher, i).weight[:, idx]), i


def _kill_channels(net: Network, i: int, dead: torch.Tensor) -> None:
    """Make output channels ``dead`` of layer i exactly zero (zero rows, zero BN affine)."""
    with torch.no_grad():
        conv(net, i).weight[dead] = 0
        bn(net, i).weight[dead] = 0
        bn(net, i).bias[dead] = 0


def test_dead_channels_are_dropped_and_logits_survive_plain() -> None:
    arch = zoo_arch("digitsnet")
    teacher = random_teacher(arch, seed=4)
    dead = torch.arange(1, 32, 2)  # 16 of 32 channels of layer 1
    _kill_channels(teacher, 1, dead)
    decisions = [1.0] * len(arch)
    decisions[1] = 0.5
    student = student_of(teacher, decisions)
    x = _inputs(arch)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-5, atol=1e-5)


def test_dead_channels_in_a_tied_residual_group_keep_additions_aligned() -> None:
    """Shrinking ResNet-20's stem shrinks its whole stage; when the dropped channels are
    dead in the stem and in every identity-block tail, the student computes the teacher's
    function, which only holds if the residual additions stay aligned."""
    arch = zoo_arch("resnet20")
    teacher = random_teacher(arch, seed=5)
    dead = torch.tensor([0, 3, 4, 7, 9, 10, 13, 15])
    for i in (0, 2, 4, 6):
        _kill_channels(teacher, i, dead)
    decisions = [1.0] * len(arch)
    decisions[0] = 0.5
    student = student_of(teacher, decisions, min_width=1)
    assert [student.arch.layers[i].out for i in (0, 2, 4, 6)] == [8] * 4
    x = _inputs(arch)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_dead_channels_in_a_block_body() -> None:
    arch = zoo_arch("resnet20")
    teacher = random_teacher(arch, seed=6)
    decisions = [1.0] * len(arch)
    dead = torch.arange(8)
    for head in (3, 10):  # a body head in stage 0 and in stage 1
        assert layer_rules(arch)[head].shrinkable
        _kill_channels(teacher, head, dead if head == 3 else torch.arange(16))
        decisions[head] = 0.5
    student = student_of(teacher, decisions, min_width=1)
    x = _inputs(arch)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_removed_layer_consumer_gets_overlapping_weights() -> None:
    arch = zoo_arch("digitsnet")
    teacher = random_teacher(arch, seed=7)
    decisions = [1.0] * len(arch)
    decisions[1] = None  # layer 3 (32 in) is now fed by layer 0 (32 out)
    decisions[6] = None  # the classifier now sees 64 features instead of 128
    student = student_of(teacher, decisions)
    origin = [l.origin for l in student.arch.layers]
    s3, s_lin = origin.index(3), origin.index(8)
    assert torch.equal(conv(student, s3).weight, conv(teacher, 3).weight)
    lin_s, lin_t = student.layers[s_lin][1], teacher.layers[8][1]
    assert torch.equal(lin_s.weight, lin_t.weight[:, :64])
    assert torch.equal(lin_s.bias, lin_t.bias)


@st.composite
def shrink_only(draw, arch: Architecture):
    rules = layer_rules(arch)
    return [draw(st.sampled_from([0.1, 0.25, 0.5, 0.7, 0.9, 1.0])) if r.shrinkable else 1.0 for r in rules]


@settings(max_examples=25, **_SETTINGS)
@given(shrink_only(zoo_arch("digitsnet")))
def test_plain_chain_inheritance_matches_reference(decisions) -> None:
    """For a chain without residuals, an independent re-implementation: every layer keeps
    its top-L1 rows and the columns its producer kept."""
    arch = zoo_arch("digitsnet")
    teacher = random_teacher(arch, seed=8)
    student = student_of(teacher, decisions)
    prev = torch.arange(1)
    for i, layer in enumerate(student.arch.layers):
        if layer.kind == CONV:
            t_w = conv(teacher, i).weight
            rows = torch.topk(l1(t_w), layer.out).indices.sort().values
            assert torch.equal(conv(student, i).weight, t_w[rows][:, prev]), i
            assert torch.equal(bn(student, i).running_var, bn(teacher, i).running_var[rows]), i
            prev = rows
        elif layer.kind == LINEAR:
            assert torch.equal(student.layers[i][1].weight, teacher.layers[i][1].weight[:, prev])


@st.composite
def legal_decisions(draw, arch: Architecture):
    out = []
    for rule in layer_rules(arch):
        if rule.removable and draw(st.integers(0, 3)) == 0:
            out.append(None)
        else:
            out.append(draw(st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0])))
    return out


@pytest.mark.parametrize("name, examples", [("resnet20", 20), ("digitsnet", 20), ("vgg11", 4)])
def test_random_students_inherit_and_run(name: str, examples: int) -> None:
    arch = zoo_arch(name)
    teacher = random_teacher(arch, seed=9)

    @settings(max_examples=examples, **_SETTINGS)
    @given(legal_decisions(arch))
    def check(decisions):
        try:
            student = student_of(teacher, decisions)
        except InvalidStudent:
            return
        with torch.no_grad():
            out = student(_inputs(arch, 2))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        # every student BN channel is one of its origin's teacher channels
        for i, layer in enumerate(student.arch.layers):
            if layer.kind == CONV:
                t_bn = bn(teacher, layer.origin)
                assert set(bn(student, i).running_var.tolist()) <= set(t_bn.running_var.tolist())

    check()


def test_resnet20_student_shrinking_stem_and_removing_blocks_runs() -> None:
    arch = zoo_arch("resnet20")
    teacher = random_teacher(arch, seed=10)
    decisions = [1.0] * len(arch)
    decisions[0] = 0.5
    for k in (1, 2, 5, 13):  # block 0 entirely, block 2's head, a stage-1 tail
        decisions[k] = None
    student = student_of(teacher, decisions, min_width=1)
    assert len(student.arch.blocks()) == len(arch.blocks()) - 1
    with torch.no_grad():
        out = student(_inputs(arch))
    assert torch.isfinite(out).all()
    # inheriting is deterministic and leaves the student's own shapes alone
    again = student_of(teacher, decisions, min_width=1)
    for (k, v), (k2, v2) in zip(student.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)




@st.composite
def resnet_shrinks(draw, arch: Architecture):
    return [draw(st.sampled_from([0.2, 0.4, 0.5, 0.75, 1.0])) if r.shrinkable else 1.0
            for r in layer_rules(arch)]


@settings(max_examples=15, **_SETTINGS)
@given(resnet_shrinks(zoo_arch("resnet20")))
def test_resnet_shrink_inheritance_matches_reference(decisions) -> None:
    """Every conv of a shrink-only ResNet-20 student holds the teacher's rows of its
    group's top summed-L1 channels and the columns its input group kept."""
    arch = zoo_arch("resnet20")
    teacher = random_teacher(arch, seed=11)
    student = student_of(teacher, decisions, min_width=1)
    s_arch = student.arch
    assert len(s_arch) == len(arch)
    group, source = reference_spaces(arch)
    members: dict[int, list[int]] = {}
    for i, g in group.items():
        if arch.layers[i].kind == CONV:
            members.setdefault(g, []).append(i)
    kept = {"image": torch.arange(3)}
    for g, idx in members.items():
        widths = {s_arch.layers[i].out for i in idx}
        assert len(widths) == 1, f"tied layers {idx} disagree on width: {widths}"
        score = sum(l1(conv(teacher, i).weight) for i in idx)
        kept[g] = torch.topk(score, widths.pop()).indices.sort().values
    for i, layer in enumerate(s_arch.layers):
        if layer.kind == CONV:
            expected = conv(teacher, i).weight[kept[group[i]]][:, kept[source[i]]]
            assert torch.equal(conv(student, i).weight, expected), i
            assert torch.equal(bn(student, i).bias, bn(teacher, i).bias[kept[group[i]]]), i
        elif layer.kind == LINEAR:
            assert torch.equal(student.layers[i][1].weight, teacher.layers[i][1].weight[:, kept[source[i]]])
    with torch.no_grad():
        assert torch.isfinite(student(_inputs(arch, 2))).all()
