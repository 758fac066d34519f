"""benchmarks/fidelity.py: the resumable, sharded fidelity study, at tiny scale on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from n2n_gym.benchmarks import fidelity

TINY = ["--env", "N2N-DigitsNet-Digits-v0", "--workers", "1", "--random", "2", "--records", "1", "--magnitude", "1",
        "--removal", "1", "--reference-epochs", "1", "--stability-students", "1", "--protocols", "bn-only,fast",
        "--nice", "0"]


def _lines(folder):
    return [json.loads(line) for p in sorted(folder.glob("scores*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fid") / "digits"
    assert fidelity.main(["run", *TINY, "--out", str(folder)]) == 0
    return folder


def test_students_cover_every_kind_and_are_smaller_than_the_teacher(study):
    meta = json.loads((study / "students.json").read_text())
    kinds = [s["kind"] for s in meta["students"]]
    assert sorted(set(kinds)) == ["magnitude", "random", "record", "removal"]
    assert kinds[:4] == ["random", "record", "magnitude", "removal"]  # round-robin: a partial study covers all
    assert all(s["params"] < meta["teacher_params"] for s in meta["students"])
    assert len({s["architecture"] for s in meta["students"]}) == len(kinds)
    assert meta["data_variant"] and len(meta["teacher_sha256"]) == 64


def test_every_item_is_appended_once_and_a_rerun_resumes(study, capsys):
    meta = json.loads((study / "students.json").read_text())
    rows = _lines(study)
    # per student: bn-only, fast, the reference; the 2x reference for the first one
    assert len(rows) == 3 * len(meta["students"]) + 1
    assert {r["protocol"] for r in rows} == {"bn-only", "fast", "reference", "reference-2x"}
    refs = [r for r in rows if r["protocol"] == "reference"]
    assert all(r["test_accuracy"] is not None for r in refs)  # the reference is also scored on the test set
    assert all(r["test_accuracy"] is None for r in rows if r["protocol"] == "fast")  # candidates: validation only
    assert fidelity.main(["run", *TINY, "--out", str(study)]) == 0
    assert len(_lines(study)) == len(rows)
    assert "0 to run now" in capsys.readouterr().out


def test_shards_partition_the_items_and_a_cut_line_is_skipped(study, tmp_path):
    import shutil

    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(study / "students.json", folder / "students.json")
    for k in (0, 1):
        assert fidelity.main(["run", *TINY, "--out", str(folder), "--shard", f"{k}/2"]) == 0
    assert sorted(p.name for p in folder.glob("scores*.jsonl")) == ["scores-0of2.jsonl", "scores-1of2.jsonl"]
    key = lambda r: (r["student"], r["protocol"], r["seed"])  # noqa: E731
    assert sorted(map(key, _lines(folder))) == sorted(map(key, _lines(study)))
    # the same items, trained the same way: equal scores in either process
    same = {key(r): r["accuracy"] for r in _lines(study)}
    assert all(same[key(r)] == r["accuracy"] for r in _lines(folder))
    with open(folder / "scores-0of2.jsonl", "a") as f:
        f.write('{"student": 0, "proto')  # a writer killed mid-line
    assert len(fidelity.read_scores(folder)) == len(_lines(study))


def test_report_gives_rank_correlations_intervals_and_the_stability_check(study):
    assert fidelity.main(["report", "--env", "N2N-DigitsNet-Digits-v0", "--out", str(study), "--resamples", "200"]) == 0
    out = json.loads((study / "ladder.json").read_text())
    assert set(out["ladder"]) == {"bn-only", "fast"}
    fast = out["ladder"]["fast"]
    assert fast["students"] == out["students_with_reference"] == out["students"]
    for k in ("spearman_reward", "kendall_reward", "spearman_accuracy"):
        assert -1 <= fast[k] <= 1
    lo, hi = fast["spearman_reward_ci95"]
    assert lo <= hi
    assert out["reference_stability"]["students"] == 1  # too few for a correlation: counted, not faked
    assert "spearman_reward" not in out["reference_stability"]
    assert (study / "ladder.png").stat().st_size > 0


def test_the_report_gives_the_size_alone_null_beside_the_ladder(study):
    from scipy.stats import spearmanr

    from n2n_gym.evaluation.reward import n2n_reward

    fidelity.main(["report", "--env", "N2N-DigitsNet-Digits-v0", "--out", str(study), "--resamples", "50"])
    out = json.loads((study / "ladder.json").read_text())
    meta = json.loads((study / "students.json").read_text())
    ref = sorted((r["student"], r["reward"], r["params"]) for r in _lines(study) if r["protocol"] == "reference")
    t_acc = meta["teacher_val_accuracy"]
    size_reward = [n2n_reward(student_params=p, teacher_params=meta["teacher_params"], student_accuracy=t_acc,
                              teacher_accuracy=t_acc).value for _, _, p in ref]
    null = out["size_only"]
    assert null["students"] == len(ref)
    assert null["spearman_reward"] == pytest.approx(spearmanr([r for _, r, _ in ref], size_reward).statistic)
    assert "size_only" not in out["ladder"] and "spearman_accuracy" not in null  # a yardstick, never a candidate
    # each protocol calibrated leave-one-out: its estimates are the library's, fitted on the other students
    from n2n_gym.evaluation.calibration import leave_one_out

    cal = out["calibrated"]["fast"]
    fast = sorted((r["student"], r["accuracy"]) for r in _lines(study) if r["protocol"] == "fast")
    refs = {r["student"]: r["accuracy"] for r in _lines(study) if r["protocol"] == "reference"}
    estimate = leave_one_out([a for _, a in fast], [refs[s] for s, _ in fast], 0.1)
    errors = sorted(abs(e - refs[s]) for e, (s, _) in zip(estimate, fast))
    assert cal["students"] == len(fast) and set(cal["fit"]) == {"intercept", "slope", "x_min", "chance"}
    assert cal["median_abs_error_points"] == pytest.approx(100 * float(np.median(errors)))


def test_bad_arguments_fail_at_once(study, tmp_path):
    with pytest.raises(SystemExit):
        fidelity.main(["run", *TINY, "--shard", "2/2"])
    with pytest.raises(SystemExit, match="unknown"):
        fidelity.main(["run", *TINY, "--out", str(study), "--protocols", "fats"])
    with pytest.raises(SystemExit, match="reference is 1 epochs"):
        fidelity.main(["run", *TINY[:-8], "--reference-epochs", "3", "--out", str(study)])
    with pytest.raises(SystemExit, match="no study"):
        fidelity.main(["report", "--out", str(tmp_path / "none")])



@pytest.mark.parametrize("command", ["run", "report", "supernet"])
def test_an_unknown_env_id_is_named_at_the_command_line(command, capsys):
    """A typo in --env is Gymnasium's 'doesn't exist' with the versions there are, not 'no study
    ... run it first' (bug hunt)."""
    with pytest.raises(SystemExit) as exc:
        fidelity.main([command, "--env", "N2N-ResNet20-CIFAR10-v9"])
    assert exc.value.code == 2
    assert "argument --env: Environment version `v9`" in capsys.readouterr().err


def test_the_ladder_scales_its_rungs_to_the_training_split():
    small = fidelity.ladder(1000)
    assert small["mse-4k"].train_images is None and small["mse-4k"].epochs == 4  # the whole split, 4 passes
    big = fidelity.ladder(45000)
    assert (big["mse-4k"].train_images, big["mse-4k"].epochs) == (2048, 2)
    assert big["kd-8k"].loss == "kd" and big["mse-8k"].loss == "mse"
    assert big["bn-only"].epochs == 0 and big["bn-only"].bn_recalibration == 2048
    ref = fidelity.reference(5)
    assert (ref.epochs, ref.augment, ref.lr_drop, ref.train_images, ref.val_images) == (5, True, True, None, None)


def test_a_trained_supernet_becomes_a_candidate_keyed_by_its_content(study, tmp_path):
    import shutil

    folder = tmp_path / "with-supernet"
    folder.mkdir()
    for name in ("students.json", "scores.jsonl"):
        shutil.copy(study / name, folder / name)
    assert fidelity.main(["supernet", "--env", "N2N-DigitsNet-Digits-v0", "--out", str(folder), "--epochs", "1",
                          "--train-images", "128", "--nice", "0"]) == 0
    assert (folder / "supernet.pt").is_file() and (folder / "supernet.ckpt").is_file()
    before = len(_lines(folder))
    assert fidelity.main(["run", *TINY, "--out", str(folder)]) == 0  # a --protocols list without it: not run
    assert len(_lines(folder)) == before
    with_it = [("bn-only,fast,supernet-bn" if t == "bn-only,fast" else t) for t in TINY]
    assert fidelity.main(["run", *with_it, "--out", str(folder)]) == 0
    rows = _lines(folder)
    new = [r for r in rows[before:]]
    meta = json.loads((folder / "students.json").read_text())
    assert [r["protocol"] for r in new] == ["supernet-bn"] * len(meta["students"])
    assert all(0 <= r["accuracy"] <= 1 and len(r["spec"]["supernet"]) == 64 for r in new)
    fidelity.main(["report", "--env", "N2N-DigitsNet-Digits-v0", "--out", str(folder), "--resamples", "100"])
    assert "supernet-bn" in json.loads((folder / "ladder.json").read_text())["ladder"]


def test_rank_shift_by_kind_finds_a_kind_the_protocol_ranks_too_low():
    import numpy as np

    # the reference ranks students 0..5 in order; the protocol puts the removal ones (0, 1) last
    ref = {i: {"reward": float(i)} for i in range(6)}
    proto = {i: {"reward": float(i if i > 1 else i - 10)} for i in range(6)}
    kinds = {0: "removal", 1: "removal", 2: "random", 3: "random", 4: "random", 5: "magnitude"}
    out = fidelity.rank_shift_by_kind(proto, ref, kinds, 200, np.random.default_rng(0))
    assert out["removal"]["students"] == 2 and out["removal"]["mean"] == 0.0
    proto = {i: {"reward": float(-i if i < 2 else i)} for i in range(6)}  # removal reversed: same places
    ref2 = {i: {"reward": float(i + 10 if i < 2 else i)} for i in range(6)}  # training ranks them first
    out = fidelity.rank_shift_by_kind(proto, ref2, kinds, 200, np.random.default_rng(0))
    assert out["removal"]["mean"] < -0.5 and out["removal"]["ci95"][1] < 0
    assert out["magnitude"]["ci95"] is None  # one student: no interval


def test_the_stability_runs_are_spread_through_the_study_each_after_its_students_reference():
    students = [{"id": i} for i in range(41)]
    order = fidelity.items(students, {}, 5, 8)
    twice = [i for i, it in enumerate(order) if it["protocol"] == "reference-2x"]
    assert [order[i]["student"] for i in twice] == list(range(8))
    ref_at = {it["student"]: i for i, it in enumerate(order) if it["protocol"] == "reference"}
    assert all(ref_at[order[i]["student"]] < i for i in twice)
    assert twice[0] < len(order) // 4 and twice[-1] < len(order) - 1  # early reading, not all at the end
    assert len(fidelity.items(students[:2], {}, 5, 8)) == 4  # fewer students than stability runs: each once


def _without_one_reference(study, folder):
    """A copy of the study (its `fast` and reference items) in ``folder`` whose first reference
    did not finish: (folder, the rows, the missing row)."""
    import shutil

    folder.mkdir()
    shutil.copy(study / "students.json", folder / "students.json")
    rows = [r for r in _lines(study) if r["protocol"] != "bn-only"]
    killed = next(r for r in rows if r["protocol"] == "reference")
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r is not killed))
    return folder, rows, killed


def test_a_killed_reference_continues_from_its_epoch_checkpoint(study, tmp_path):

    import gymnasium as gym
    import torch

    from n2n_gym.evaluation.protocols import Protocol
    from n2n_gym.ir.arch import Architecture

    folder, rows, killed = _without_one_reference(study, tmp_path / "resumed")
    assert not list(study.glob("checkpoints/*"))  # a finished study leaves no checkpoint behind
    # what a study killed after the reference's last epoch leaves: that epoch's checkpoint
    arch = next(s["architecture"] for s in json.loads((study / "students.json").read_text())["students"]
                if s["id"] == killed["student"])
    ckpt = fidelity._checkpoint_path(str(folder), killed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study's workers, so the weights match theirs
    try:
        ev = gym.make("N2N-DigitsNet-Digits-v0", cache=False, progress=False).unwrapped.evaluator
        ev.evaluate(Architecture.from_json(arch), Protocol.from_dict(killed["spec"]), 0, checkpoint=ckpt)
    finally:
        torch.set_num_threads(threads)
    key = ev.key(Architecture.from_json(arch), Protocol.from_dict(killed["spec"]), 0)
    assert fidelity._checkpoint_epoch(ckpt, key) == 1 and fidelity._checkpoint_epoch(ckpt, "another") == 0
    assert fidelity.main(["run", *TINY[:-2], "--protocols", "fast", "--nice", "0", "--out", str(folder)]) == 0
    again = next(r for r in _lines(folder) if (r["student"], r["protocol"]) == (killed["student"], "reference"))
    assert again["resumed_at_epoch"] == 1 and not ckpt.exists()
    assert (again["accuracy"], again["test_accuracy"]) == (killed["accuracy"], killed["test_accuracy"])


def _row(rho, seconds, acc_lo=0.2, top5=0.8, students=40):
    return {"students": students, "spearman_reward": rho, "median_seconds": seconds, "top5_in_top10": top5,
            "spearman_accuracy_ci95": [acc_lo, 0.9]}


def test_the_rule_picks_the_cheapest_informative_protocol_at_the_target():
    summary = {"size_only": {"top5_in_top10": 0.6},
               "ladder": {"bn-only": _row(0.3, 0.2, acc_lo=-0.1), "fast": _row(0.7, 0.7), "mse-8k": _row(0.85, 2.4)},
               "calibrated": {"bn-only": _row(0.95, 0.2, acc_lo=-0.1),  # flat map, size alone: no accuracy information
                              "fast": _row(0.9, 0.7, top5=0.4),  # misses the best students more than size alone
                              "mse-8k": _row(0.9, 2.4)}}
    # as cheap measured or calibrated (the map costs nothing): the higher rho
    assert fidelity.choose(summary) == {"protocol": "mse-8k", "calibrated": True, "rule_met": True,
                                        "why": "cheapest at rho >= 0.8 with accuracy information (0.90, 2.4 s)"}
    summary["calibrated"]["fast"]["top5_in_top10"] = 0.8
    assert fidelity.choose(summary)["protocol"] == "fast" and fidelity.choose(summary)["calibrated"]
    low = {"size_only": {}, "ladder": {"fast": _row(0.5, 0.7), "bn-only": _row(0.9, 0.2, acc_lo=-0.3)}}
    got = fidelity.choose(low)
    assert (got["protocol"], got["rule_met"]) == ("fast", False) and "none reaches" in got["why"]
    few = {"ladder": {"fast": _row(0.9, 0.7, students=9)}}
    assert fidelity.choose(few)["protocol"] is None


def test_an_item_that_fails_for_a_reason_not_the_students_own_is_not_recorded(study, tmp_path, capsys):
    """Break-it 3 #5: an unexpected failure (out of memory, a changed file) was appended as a -1
    score that a rerun skipped. Here the reference's checkpoint cannot be written (its path is
    a folder): the item is left to run again, and the rerun records it."""

    folder, rows, killed = _without_one_reference(study, tmp_path / "failing")
    blocker = fidelity._checkpoint_path(str(folder), killed)
    blocker.mkdir()
    args = ["run", *TINY[:-2], "--protocols", "fast", "--nice", "0", "--out", str(folder)]
    assert fidelity.main(args) == 1
    assert "FAILED, not recorded" in capsys.readouterr().out
    assert len(_lines(folder)) == len(rows) - 1
    blocker.rmdir()
    assert fidelity.main(args) == 0 and len(_lines(folder)) == len(rows)
