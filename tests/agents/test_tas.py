"""The TAS baseline (n2n_gym/agents/tas.py): CWI, expected FLOPs against the IR, the cost loss,
initialisation from the teacher, and tiny searches end to end."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_DIGITS_RECIPE

import n2n_gym
from n2n_gym.agents.tas import (
    TAS,
    Args,
    SearchableNetwork,
    actions_for,
    channel_wise_interpolate,
    cost_loss,
    cwi_matrix,
    depth_choices,
    kd_loss,
    make_searchable,
    mix_candidates,
    search,
    tau_at,
)
from n2n_gym.data.datasets import dataset_info, load_dataset
from n2n_gym.ir.arch import Architecture
from n2n_gym.ir.build import build
from n2n_gym.ir.edits import apply_decisions
from n2n_gym.ir.zoo import teacher_architecture

SHAPES = {"digitsnet": (1, 8, 8), "resnet20": (3, 16, 16), "resnet56": (3, 32, 32), "vgg11": (3, 32, 32),
          "resnet18": (3, 32, 32), "resnet34": (3, 32, 32)}


def one_hot_logits(net: SearchableNetwork, generator: torch.Generator) -> None:
    """Put every distribution on one random candidate (logit 1000 there, 0 elsewhere)."""
    with torch.no_grad():
        k = net.width_logits.shape[1]
        pick = torch.randint(0, k, (net.width_logits.shape[0],), generator=generator)
        net.width_logits.copy_(1000.0 * F.one_hot(pick, k))
        for d in net.depth_logits:
            d.copy_(1000.0 * F.one_hot(torch.randint(0, len(d), (), generator=generator), len(d)))


# ---------------------------------------------------------------------------- channel-wise interpolation
@pytest.mark.parametrize("c_in,c_out", [(10, 16), (16, 10), (7, 7), (19, 64), (64, 19), (1, 5)])
def test_cwi_shapes_and_values(c_in, c_out):
    x = torch.randn(3, c_in, 5, 4)
    y = channel_wise_interpolate(x, c_out)
    assert y.shape == (3, c_out, 5, 4)
    # adaptive average pooling over channels: output j averages channels floor(j C/C') .. ceil((j+1) C/C') - 1
    for j in range(c_out):
        lo, hi = (j * c_in) // c_out, -((-(j + 1) * c_in) // c_out)
        torch.testing.assert_close(y[:, j], x[:, lo:hi].mean(1))
    # the matrix form used in the search equals it
    torch.testing.assert_close(torch.einsum("oc,nchw->nohw", cwi_matrix(c_in, c_out), x), y)
    if c_in == c_out:
        assert y is x


def test_mix_candidates_is_the_weighted_sum_of_cwi_aligned_outputs():
    a, b = torch.randn(2, 10, 3, 3), torch.randn(2, 16, 3, 3)
    w = torch.tensor([0.3, 0.7], requires_grad=True)
    out = mix_candidates([a, b], w)
    assert out.shape == (2, 16, 3, 3)
    torch.testing.assert_close(out, 0.3 * channel_wise_interpolate(a, 16) + 0.7 * b)
    out.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_depth_choices_follow_tas():
    assert depth_choices(3) == (1, 2, 3)
    assert depth_choices(2) == (1, 2)
    assert depth_choices(9) == (1, 3, 5, 7, 9)
    assert depth_choices(4) == (1, 3, 4)
    assert depth_choices(6) == (1, 3, 5, 6)
    assert depth_choices(1) == (1,)


# ---------------------------------------------------------------------------- expected FLOPs
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_one_hot_expected_flops_equal_the_ir(name):
    arch = teacher_architecture(name, SHAPES[name], 10)
    net = SearchableNetwork(arch)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(6):
        one_hot_logits(net, gen)
        derived = net.derived_architecture()
        expected = net.expected_flops().item()
        assert expected == derived.flops, (expected, derived.flops)
        assert net.argmax_flops() == derived.flops
        assert derived.flops < arch.flops or all(r == 1.0 for r in net.chosen()[0])
        seen.add(derived.flops)
    assert len(seen) > 1
    # all candidates at full width and full depth: the teacher itself
    with torch.no_grad():
        net.width_logits.zero_()
        net.width_logits[:, -1] = 1000.0
        for d in net.depth_logits:
            d.zero_()
            d[-1] = 1000.0
    assert net.expected_flops().item() == arch.flops
    assert net.derived_architecture().canonical_hash() == arch.canonical_hash()


def test_search_space_ties_residual_widths_and_searches_stage_depths():
    arch = teacher_architecture("resnet20", (3, 32, 32), 10)
    net = SearchableNetwork(arch)
    # stem + 9 block-internal convs... one group per channel space a shrinkable conv leads
    assert len(net.group_leaders) == 1 + 9 + 2
    assert [len(s) for s in net.stages] == [3, 3, 3] and net.depth_options == [(1, 2, 3)] * 3
    vgg = SearchableNetwork(teacher_architecture("vgg11", (3, 32, 32), 10))
    assert vgg.stages == [] and len(vgg.group_leaders) == 8  # width only
    assert SearchableNetwork(arch, search_depth=False).depth_options == [(3,)] * 3


def test_expected_flops_weight_blocks_by_survival_probability():
    arch = teacher_architecture("resnet20", (3, 32, 32), 10)
    net = SearchableNetwork(arch)
    with torch.no_grad():
        net.width_logits.zero_()
        net.width_logits[:, -1] = 1000.0  # full widths
        for d in net.depth_logits:
            d.copy_(torch.tensor([0.0, 0.0, 0.0]))  # uniform over 1, 2, 3 blocks
    full = arch.flops
    block_flops = {}
    for s, blocks in enumerate(net.stages):
        for j, (body, shortcut) in enumerate(blocks):
            layers = body + ([shortcut] if shortcut is not None else [])
            block_flops[s, j] = sum(arch.layer_flops()[k] for k in layers)
    # P(depth > 0) = 1, P(depth > 1) = 2/3, P(depth > 2) = 1/3
    want = full - sum(f * (1 - [1, 2 / 3, 1 / 3][j]) for (s, j), f in block_flops.items())
    assert net.expected_flops().item() == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------- cost loss
def test_cost_loss_sign_on_both_sides_of_the_target():
    f0, ratio, tol = 1000.0, 0.5, 0.05
    target, band = ratio * f0, tol * f0
    for argmax_f, sign in [(300.0, -1), (449.0, -1), (450.0, 0), (480.0, 0), (500.0, 0), (501.0, +1), (900.0, +1)]:
        e = torch.tensor(470.0, dtype=torch.float64, requires_grad=True)
        loss = cost_loss(e, argmax_f, target, band)
        if sign == 0:
            assert loss.item() == 0.0
            continue
        assert loss.item() == pytest.approx(sign * torch.log(torch.tensor(470.0)).item())
        loss.backward()
        # gradient descent moves E[F] up when too small, down when too large
        assert torch.sign(-e.grad).item() == -sign


def test_cost_gradient_moves_the_expected_flops_of_the_network():
    arch = teacher_architecture("resnet20", (3, 32, 32), 10)
    for argmax_f, direction in [(0.1 * arch.flops, +1), (0.9 * arch.flops, -1)]:
        torch.manual_seed(0)
        net = SearchableNetwork(arch)
        opt = torch.optim.Adam(net.arch_parameters(), lr=1e-2, betas=(0.5, 0.999))
        before = net.expected_flops().item()
        for _ in range(5):
            opt.zero_grad()
            cost_loss(net.expected_flops(), argmax_f, 0.5 * arch.flops, 0.05 * arch.flops).backward()
            opt.step()
        assert (net.expected_flops().item() - before) * direction > 0


def test_tau_schedule_and_kd_loss():
    assert tau_at(0.0, 5.0, 0.1) == pytest.approx(5.0)
    assert tau_at(1.0, 5.0, 0.1) == pytest.approx(0.1)
    assert tau_at(0.5, 5.0, 0.1) == pytest.approx(2.55)
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    kl = (F.softmax(t / 4, -1) * (F.log_softmax(t / 4, -1) - F.log_softmax(s / 4, -1))).sum(-1).mean()
    want = 0.1 * F.cross_entropy(s, y) + 0.9 * 16 * kl
    torch.testing.assert_close(kd_loss(s, t, y, 0.9, 4.0), want)


# ---------------------------------------------------------------------------- initialisation and forward
@pytest.mark.parametrize("name", ["digitsnet", "resnet20"])
def test_full_width_network_initialised_from_a_teacher_computes_the_teacher(name):
    arch = teacher_architecture(name, SHAPES[name], 10)
    torch.manual_seed(0)
    teacher = build(arch).eval()
    net = SearchableNetwork(arch).load_teacher(teacher).eval()
    with torch.no_grad():
        net.width_logits.zero_()
        net.width_logits[:, -1] = 1.0
        for d in net.depth_logits:
            d.zero_()
            d[-1] = 1.0
    x = torch.randn(5, *SHAPES[name])
    with torch.no_grad():
        torch.testing.assert_close(net(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_sampled_forward_has_gradients_for_both_parameter_sets():
    arch = teacher_architecture("resnet20", (3, 16, 16), 10)
    net = SearchableNetwork(arch)
    s = net.sample(tau=1.0, num=2, generator=torch.Generator().manual_seed(0))
    assert s.width_index.shape == (len(net.group_leaders), 2)
    assert (s.width_index[:, 0] != s.width_index[:, 1]).all()  # without replacement
    torch.testing.assert_close(s.width_weight.sum(1), torch.ones(len(net.group_leaders)))
    out = net(torch.randn(4, 3, 16, 16), s)
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.randint(0, 10, (4,))).backward()
    assert net.width_logits.grad is not None and net.width_logits.grad.abs().sum() > 0
    assert all(d.grad is not None for d in net.depth_logits)
    assert all(p.grad is not None for p in net.weight_parameters() if p.dim() == 4)


# ---------------------------------------------------------------------------- searches
def test_tiny_search_on_resnet20_random_weights_gives_a_valid_student():
    arch = teacher_architecture("resnet20", (3, 16, 16), 10)
    args = Args(steps=3, batch_size=8, init="random", flops_ratio=0.5, progress=False, log_every=1, seed=0)
    net = make_searchable(arch, args)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    result = search(net, x, y, dataset_info("cifar10"), args)
    student = result.architecture
    assert student.canonical_hash() == apply_decisions(arch, result.decisions).canonical_hash()
    student.shapes()  # raises if it cannot be built
    assert student.flops == net.argmax_flops() and result.flops_ratio == student.flops / arch.flops
    assert all(0 <= layer.origin < len(arch) for layer in student.layers)
    assert Architecture.from_json(student.to_json()) == student
    assert build(student)(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert result.steps == 3 and result.images == 2 * 3 * 8 and len(result.log) == 3
    assert result.search_flops > 0


def test_selection_best_in_band_and_last():
    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    info = dataset_info("digits")
    # a band holding every architecture: each checkpoint is scored, the most accurate is chosen
    args = Args(steps=4, batch_size=16, init="random", flops_ratio=1.0, tolerance=1.0, select_every=1,
                eval_images=32, progress=False, log_every=1)
    result = search(make_searchable(arch, args), x, y, info, args)
    assert len(result.checkpoints) == 4 and all(c["in_band"] for c in result.checkpoints)
    assert result.selected_accuracy == max(c["accuracy"] for c in result.checkpoints)
    assert result.in_band
    # "last": the final argmax, never scored
    args = dataclasses.replace(args, select="last")
    net = make_searchable(arch, args)
    result = search(net, x, y, info, args)
    assert result.decisions == net.decisions() and result.selected_step == 3 and result.selected_accuracy is None
    # an unreachable band: nothing in band, the last genotype is taken
    args = dataclasses.replace(args, select="best-in-band", flops_ratio=0.01, tolerance=0.001)
    net = make_searchable(arch, args)
    result = search(net, x, y, info, args)
    assert not result.in_band and result.decisions == net.decisions()


def test_tiny_search_end_to_end_on_the_embedded_env(tmp_path):
    args = Args(env_kwargs={"teacher_recipe": dict(SMALL_DIGITS_RECIPE), "progress": False}, protocol="tiny",
                steps=6, batch_size=64, flops_ratio=0.5, final_epochs=1, final_batch_size=128, progress=False,
                device="cpu", log_every=2, seed=0)
    tas = TAS(args)
    record = tas.run()
    json.dumps(record)  # JSON-safe, like the RL agents' records
    assert record["agent"] == "tas" and record["valid"], record.get("reason")
    assert -1.0 <= record["reward"] <= 1.0
    for key in ("accuracy", "test_accuracy", "params", "flops", "compression", "architecture", "actions",
                "student_epochs", "total_student_epochs", "final_accuracy", "flops_ratio", "in_band"):
        assert key in record, key
    student = Architecture.from_json(record["architecture"])
    assert student.flops == record["flops"] == tas.result.architecture.flops
    assert record["flops_ratio"] == pytest.approx(student.flops / teacher_architecture("digitsnet", (1, 8, 8)).flops)
    # the actions replay to the same student in a fresh env


    env = gym.make(n2n_gym.DEFAULT_ENV_ID, stage="joint", ratios=args.ratio_list(), protocol="tiny",
                   teacher_recipe=dict(SMALL_DIGITS_RECIPE), progress=False)
    try:
        replayed = env.unwrapped.student_architecture(record["actions"])
        assert replayed.canonical_hash() == student.canonical_hash()
        assert record["actions"] == actions_for(record["decisions"], args.ratio_list())
    finally:
        env.close()
    assert record["student_epochs"] > 0 and record["total_student_epochs"] > record["student_epochs"]


def test_script_arguments(capsys):
    from n2n_gym.agents.tas import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--flops-ratio" in text and "--final-epochs" in text and "--no-search-depth" in text
    args = parse_args(["--flops-ratio", "0.4", "--steps", "7", "--env-kwargs", '{"min_width": 4}', "--no-augment"])
    assert (args.flops_ratio, args.steps, args.env_kwargs, args.augment) == (0.4, 7, {"min_width": 4}, False)
    assert args.ratio_list() == (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_budget_sizes_the_search_and_the_runner_runs_tas(monkeypatch):
    from n2n_gym.agents.tas import evaluation_epochs, steps_for_budget
    from n2n_gym.bench import runner
    from n2n_gym.evaluation.protocols import get_protocol

    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    net = SearchableNetwork(arch)
    args = Args(batch_size=64, flops_ratio=0.5)
    fast = get_protocol("fast")
    assert evaluation_epochs(fast, 2048) == pytest.approx(fast.epochs * fast.train_images / 2048)
    assert steps_for_budget(net, args, 20.0, 1000) == pytest.approx(2 * steps_for_budget(net, args, 10.0, 1000), abs=1)

    monkeypatch.setitem(runner.AGENTS, "tas", runner.AgentSpec("n2n_gym.agents.tas:run_benchmark", "TAS"))
    record = runner.run_one("N2N-DigitsNet-Digits-v0", "tas", 0, 3, protocol="tiny", device="cpu",
                            env_kwargs={"teacher_recipe": dict(SMALL_DIGITS_RECIPE)},
                            hparams={"batch_size": 64, "select_every": 2})
    assert record["budget"]["evaluations"] == 1 and record["best"]["reward"] is not None
    tas = record["extra"]["tas"]
    assert tas["search_steps"] >= 1 and tas["total_student_epochs"] > 0
    student = Architecture.from_json(record["best"]["architecture"])
    assert student.flops == record["best"]["flops"]
    # the budget of 3 tiny evaluations buys about 2 evaluations' worth of search (an estimate)

    want = 2 * evaluation_epochs(get_protocol("tiny"), len(load_dataset("digits").train_idx))
    assert want / 2 < tas["student_epochs"] < 2 * want, (tas["student_epochs"], want)


@pytest.mark.parametrize("ratio", [1.5, -0.2, 0.0])
def test_tas_flops_ratio_outside_0_1_is_refused(ratio):
    from n2n_gym.agents.tas import Args

    with pytest.raises(ValueError, match="flops_ratio must be"):
        Args(flops_ratio=ratio)
