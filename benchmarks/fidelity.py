"""The fidelity ladder: how well each cheap evaluation protocol ranks students as training would.

For one env, a fixed set of students is scored under a ladder of candidate protocols and
under a *reference*: what a practitioner runs after search, i.e. ``n2n-gym compress``'s
final distillation (:func:`n2n_gym.evaluation.final.final_protocol`: inherited weights, the whole
training split with the data set's augmentation, batch 64, Adam lr 1e-3 with the last
third at lr/10, MSE on logits), scored on the whole validation split (test accuracy
reported too). The reference is run again at twice its epochs on the first
``--stability-students`` students, to show that its ranking is stable.

The study is long (hours on a CPU for ResNet-20 CIFAR-10), so it is *resumable and
sharded*: every (student, protocol, seed) item is appended to ``scores*.jsonl`` in the
output folder as soon as it finishes, a rerun skips the items already there, and
``--shard K/N`` runs the items whose index is K modulo N (one output file per shard, for
several machines). ``--workers`` processes train students concurrently, one torch thread
each, at ``nice`` 10. Items run student by student (candidates, then the reference), so a
partial study already has complete students.

Students (``students.json``, drawn once, then fixed): uniform random ``joint`` students,
the best students of every agent in the committed records, uniform L1-magnitude-pruned
students at 2-10x, removal-only students (random layers removed, widths kept).

Subcommands::

    python -m n2n_gym.benchmarks.fidelity run --env N2N-DigitsNet-Digits-v0 --workers 2
    python -m n2n_gym.benchmarks.fidelity run --env N2N-ResNet20-CIFAR10-v0 --workers 2  # hours
    python -m n2n_gym.benchmarks.fidelity supernet --env N2N-ResNet20-CIFAR10-v0 --epochs 12  # hours
    python -m n2n_gym.benchmarks.fidelity report --env N2N-ResNet20-CIFAR10-v0

``supernet`` trains a weight-sharing supernet of the teacher (:mod:`n2n_gym.evaluation.supernet`,
Once-for-All / BigNAS; resumable) into the study folder; from then on ``run`` also scores
every student by inheriting from it and recalibrating batch norm (candidate
``supernet-bn``, no training), keyed by the supernet file's sha256.

``report`` writes ``ladder.json`` and ``ladder.png`` (Spearman rho against seconds per
student): Spearman rho and Kendall tau of rewards and of validation accuracies against the
reference, with bootstrap 95 % intervals over students, the share of the reference's top 5
found in each protocol's top 10, and median seconds per student on one CPU thread. Beside
them: the *size alone* null (every student at the teacher's accuracy), and each protocol
*calibrated* (:mod:`n2n_gym.evaluation.calibration`: its accuracy mapped to the reference's by
a monotone line fitted leave-one-out, the reward computed from the estimate), with the fit
and the estimate's median error in points.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import pathlib
import re
import sys
import time
import warnings

import numpy as np

from n2n_gym.envs.registration import canonical_env_id
from n2n_gym.utils.checks import int_at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "fidelity"
#: Reference epochs per env: the shortest run whose ranking agrees with twice as many epochs
#: is what the study establishes; these are the values it tests.
REFERENCE_EPOCHS = {"N2N-DigitsNet-Digits-v0": 30, "N2N-ResNet20-CIFAR10-v0": 5, "N2N-VGG13-MNIST-v0": 3}
#: Image budgets (student images seen in training) of the ladder's distillation rungs.
BUDGETS = (4096, 8192, 16384, 32768)
SEEDS_AVERAGED = 3  # the "several seeds averaged" rung: the 8k rung at seeds 0..2
SUPERNET = "supernet-bn"  # inherit from the study's weight-sharing supernet, recalibrate batch norm, score
#: Training throughput on one loaded CPU thread (images/s), for the up-front time estimate only.
IMAGES_PER_SECOND = {"N2N-DigitsNet-Digits-v0": 6000.0, "N2N-ResNet20-CIFAR10-v0": 250.0,
                     "N2N-VGG13-MNIST-v0": 100.0}


def slug(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", env_id).strip("-").lower()


# ----------------------------------------------------------------------------- protocols

def ladder(train_split: int) -> dict:
    """The candidate protocols for a training split of ``train_split`` images, cheapest first."""
    from n2n_gym.evaluation.protocols import PROTOCOLS, Protocol

    fast = PROTOCOLS["fast"]
    bn = min(2048, train_split)
    out = {
        "bn-only": Protocol("bn-only", "inherit", 0, None, 2000, 2000, 64, 1e-3, 0.0, False, bn_recalibration=bn),
        "fast": fast,
        "fast-bn": dataclasses.replace(fast, name="fast-bn", bn_recalibration=bn),
    }
    for budget in BUDGETS:
        images = min(budget // 2, train_split)
        epochs = max(1, round(budget / images))
        name = f"mse-{budget // 1024}k"
        out[name] = Protocol(name, "inherit", epochs, None if images >= train_split else images, 2000, 2000, 64,
                             1e-3, 0.0, False, lr_drop=True, bn_recalibration=bn)
    out["kd-8k"] = dataclasses.replace(out["mse-8k"], name="kd-8k", loss="kd")
    return out


def reference(epochs: int):
    from n2n_gym.evaluation.final import final_protocol

    return final_protocol(epochs, 1e-3)


# ------------------------------------------------------------------------------ students

def draw_students(env_id: str, n_random: int, n_records: int, n_magnitude: int, n_removal: int, seed: int,
                  records: list[pathlib.Path]) -> list[dict]:
    """The study's students as ``{"id", "kind", "architecture" (IR JSON), "params", ...}``,
    ordered round-robin over the kinds so that a partial study covers all of them."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401  (registers the ids)
    from n2n_gym.ir.arch import Architecture
    from n2n_gym.ir.edits import apply_decisions, uniform_width_student

    rng = np.random.default_rng(seed)
    env = gym.make(env_id, stage="joint", cache=False, progress=False)
    _, info = env.reset(seed=seed)
    u = env.unwrapped
    teacher, start, min_width = u.teacher_architecture, u.start_architecture, u.min_width
    masks = np.asarray(info["layer_masks"], dtype=bool)
    remove = masks.shape[1] - 1  # joint: the last action removes the layer
    removable = masks[:, remove]
    seen: set[str] = set()
    kinds: dict[str, list[dict]] = {"random": [], "record": [], "magnitude": [], "removal": []}

    def add(kind: str, arch, **extra) -> bool:
        h = arch.canonical_hash()
        if h in seen or arch.params >= teacher.params:
            return False
        seen.add(h)
        kinds[kind].append({"kind": kind, "architecture": arch.to_json(), "params": arch.params,
                            "compression": teacher.params / arch.params, **extra})
        return True

    for _ in range(200 * n_random):
        if len(kinds["random"]) >= n_random:
            break
        acts = [int(rng.choice(np.flatnonzero(m))) for m in masks]
        try:
            add("random", u.student_architecture(acts))
        except Exception:  # noqa: BLE001 - a draw that gives no valid student is skipped
            continue
    best: dict[str, list[tuple[float, str]]] = {}
    for r in json_lines(records):
        b = r.get("best") or {}
        if r.get("env_id") == env_id and b.get("valid") and b.get("architecture"):
            best.setdefault(r["agent"], []).append((float(b["reward"]), b["architecture"]))
    per_agent = max(1, math.ceil(n_records / max(len(best), 1)))
    for agent in sorted(best):
        for reward, arch_json in sorted(best[agent], reverse=True)[:per_agent]:
            if len(kinds["record"]) < n_records:
                add("record", Architecture.from_json(arch_json), agent=agent, record_reward=reward)
    for c in np.linspace(2.0, 10.0, n_magnitude) if n_magnitude else []:
        try:
            student, ratio = uniform_width_student(start, math.floor(teacher.params / c), min_width)
        except ValueError:
            continue
        add("magnitude", student, target_compression=float(c), ratio=ratio)
    for _ in range(200 * n_removal):
        if len(kinds["removal"]) >= n_removal:
            break
        p = rng.uniform(0.2, 0.8)
        decisions = [None if (rem and rng.random() < p) else 1.0 for rem in removable]
        try:
            add("removal", apply_decisions(start, decisions, min_width))
        except Exception:  # noqa: BLE001
            continue
    env.close()
    order, lists = [], [kinds[k] for k in kinds]
    for i in range(max(len(v) for v in lists)):
        order += [v[i] for v in lists if i < len(v)]
    return [{"id": i, **s} for i, s in enumerate(order)]


# --------------------------------------------------------------------------------- items

def items(students: list[dict], protocols: dict, ref_epochs: int, stability: int,
          supernet: dict | None = None) -> list[dict]:
    """Every (student, protocol, seed) of the study, in run order: per student the candidates
    (with ``supernet``, the spec of the supernet candidate), then the reference. The 2x
    reference runs of the first ``stability`` students are spread evenly through the study
    (the one of student j after student (j+1)*n/(stability+1)): on ResNet-20 each costs as much
    as two students, and a partial study then has both rho against the reference and an early
    reading of whether the reference itself is stable."""
    n = len(students)
    after: dict[int, list[int]] = {}
    for j in range(min(stability, n)):
        after.setdefault(min(n - 1, (j + 1) * n // (stability + 1)), []).append(j)
    out = []
    for pos, s in enumerate(students):
        if supernet is not None:
            out.append({"student": s["id"], "protocol": SUPERNET, "seed": 0, "spec": supernet})
        for name, proto in protocols.items():
            for seed in range(SEEDS_AVERAGED if name == "mse-8k" else 1):
                out.append({"student": s["id"], "protocol": name, "seed": seed, "spec": proto.to_dict()})
        out.append({"student": s["id"], "protocol": "reference", "seed": 0, "spec": reference(ref_epochs).to_dict()})
        for j in after.get(pos, []):
            out.append({"student": students[j]["id"], "protocol": "reference-2x", "seed": 0,
                        "spec": reference(2 * ref_epochs).to_dict()})
    return out


def item_key(item: dict) -> str:
    return json.dumps([item["student"], item["spec"], item["seed"]], sort_keys=True)


def json_lines(paths) -> list[dict]:
    """The JSON objects of the lines of ``paths`` (``records.scan_records``); a line cut by a
    killed writer is skipped."""
    from n2n_gym.bench.records import scan_records

    return [row for _, row, _ in scan_records(list(paths)) if isinstance(row, dict)]


def read_scores(folder: pathlib.Path) -> list[dict]:
    """Every finished item of every shard's file."""
    return [r for r in json_lines(sorted(folder.glob("scores*.jsonl"))) if "student" in r and "spec" in r]


# ------------------------------------------------------------------------------- workers

_EVALUATOR = None


def _init_worker(env_id: str, nice: int, parent: int) -> None:
    global _EVALUATOR
    from n2n_gym.evaluation.backends import exit_with_parent

    exit_with_parent(parent)  # a killed study leaves no worker training students no one records
    import torch

    torch.set_num_threads(1)
    if nice:
        os.nice(nice)
    import gymnasium as gym

    import n2n_gym  # noqa: F401

    env = gym.make(env_id, cache=False, progress=False)
    _EVALUATOR = env.unwrapped.evaluator


_SUPERNETS: dict = {}


def _supernet_result(arch, spec: dict, folder: str) -> dict:
    """The supernet candidate: inherit from the study's supernet (checked by its sha256),
    recalibrate batch norm, score; no training."""
    from n2n_gym.evaluation.reward import n2n_reward
    from n2n_gym.evaluation.supernet import load_supernet, score
    from n2n_gym.utils.files import file_sha256

    if spec["supernet"] not in _SUPERNETS:
        path = os.path.join(folder, "supernet.pt")
        if file_sha256(path) != spec["supernet"]:
            raise RuntimeError(f"{path} changed since the items were listed: rerun the study")
        _SUPERNETS[spec["supernet"]] = load_supernet(path)
    ev = _EVALUATOR
    acc, _ = score(arch, _SUPERNETS[spec["supernet"]], ev.data, spec["bn_recalibration"], 64, spec["val_images"])
    reward = n2n_reward(student_params=arch.params, teacher_params=ev.teacher.params, student_accuracy=acc,
                        teacher_accuracy=ev.teacher.val_accuracy).value
    return {"valid": True, "reason": "", "accuracy": acc, "test_accuracy": None, "reward": reward,
            "params": arch.params, "flops": arch.flops}


def _run_item(item: dict, arch_json: str, folder: str = "") -> dict:
    from n2n_gym.evaluation.protocols import Protocol
    from n2n_gym.ir.arch import Architecture

    arch = Architecture.from_json(arch_json)
    start = time.perf_counter()
    if item["protocol"] == SUPERNET:
        out = _supernet_result(arch, item["spec"], folder)
    else:
        # the candidates are scored on validation only; the reference also on the whole test set
        from n2n_gym.evaluation.evaluator import StudentEvaluationWarning

        reference_item = item["protocol"].startswith("reference")
        _EVALUATOR.lazy_test = not reference_item
        protocol = Protocol.from_dict(item["spec"])
        # a reference trains for tens of minutes: a checkpoint per epoch, so a killed study loses one epoch at most
        ckpt = _checkpoint_path(folder, item) if reference_item and folder else None
        resumed = _checkpoint_epoch(ckpt, _EVALUATOR.key(arch, protocol, item["seed"]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StudentEvaluationWarning)
            r = _EVALUATOR.evaluate(arch, protocol, item["seed"], checkpoint=ckpt)
        unexpected = [w for w in caught if issubclass(w.category, StudentEvaluationWarning)]
        if unexpected:  # out of memory, a changed file: not the student's score; kept out, checkpoint kept
            return {**{k: item[k] for k in ("student", "protocol", "seed")}, "failed": r.reason}
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        out = {"valid": r.valid, "reason": r.reason, "accuracy": r.accuracy,
               "test_accuracy": None if math.isnan(r.test_accuracy) else r.test_accuracy, "reward": r.reward,
               "params": r.params, "flops": r.flops}
        if resumed:
            out["resumed_at_epoch"] = resumed  # its seconds are the rest only: not a cost figure
    return {**{k: item[k] for k in ("student", "protocol", "seed", "spec")}, **out,
            "seconds": time.perf_counter() - start, "load": os.getloadavg()[0],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _checkpoint_path(folder: str, item: dict) -> pathlib.Path:
    d = pathlib.Path(folder) / "checkpoints"  # git-ignored
    d.mkdir(exist_ok=True)
    return d / (hashlib.sha1(item_key(item).encode()).hexdigest()[:20] + ".pt")


def _checkpoint_epoch(path: pathlib.Path | None, key: str) -> int:
    """The epochs a checkpoint of the distillation ``key`` holds (0: none, unreadable or
    another distillation's, which distill then ignores)."""
    if path is None or not path.exists():
        return 0
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["epoch"]) if state.get("key") == key else 0
    except Exception:  # noqa: BLE001 - a damaged file: distill starts afresh and says so
        return 0


def _append(path: pathlib.Path, row: dict) -> None:
    """One whole line per write, flushed and synced: a killed run never leaves half a row."""
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _estimate_seconds(item: dict, train_split: int, images_per_second: float) -> float:
    spec = item["spec"]
    if "supernet" in spec:
        return 3.0
    images = min(spec["train_images"] or train_split, train_split)
    trained = spec["epochs"] * images * (1.5 if spec["augment"] else 1.0)  # augmented: teacher forward per batch
    return trained / images_per_second + 3.0


# ----------------------------------------------------------------------------- commands

def cmd_run(a: argparse.Namespace) -> int:
    import gymnasium as gym

    import n2n_gym  # noqa: F401
    from n2n_gym.utils.files import atomic_write_text

    folder = pathlib.Path(a.out or RESULTS / slug(a.env))
    folder.mkdir(parents=True, exist_ok=True)
    probe_path = folder / ".write-check"
    probe_path.write_text("ok")  # an unwritable folder fails now, not after the first student
    probe_path.unlink()
    students_file = folder / "students.json"
    if students_file.exists():
        meta = json.loads(students_file.read_text())
        if meta["env"] != a.env:
            raise SystemExit(f"{students_file} holds students of {meta['env']}, not {a.env}: use another --out")
    else:
        records = sorted(pathlib.Path(RESULTS.parent).glob("baselines-*.jsonl"))
        students = draw_students(a.env, a.random, a.records, a.magnitude, a.removal, a.seed, records)
        env = gym.make(a.env, cache=False, progress=False)
        ev = env.unwrapped.evaluator
        meta = {"env": a.env, "seed": a.seed, "teacher_sha256": ev.teacher.sha256, "data_variant": ev.data.variant,
                "data_digest": ev.data.digest, "teacher_params": ev.teacher.params,
                "teacher_val_accuracy": ev.teacher.val_accuracy, "teacher_test_accuracy": ev.teacher.test_accuracy,
                "train_split": len(ev.data.train_idx), "reference_epochs": a.reference_epochs or
                REFERENCE_EPOCHS.get(a.env, 30), "stability_students": a.stability_students or 8, "students": students}
        atomic_write_text(students_file, json.dumps(meta, indent=1))
        env.close()
    if a.stability_students is not None and a.stability_students != meta["stability_students"]:
        # more (or fewer) 2x runs only add (or leave unrun) items; finished items are keyed by content
        meta["stability_students"] = a.stability_students
        atomic_write_text(students_file, json.dumps(meta, indent=1))
    students = meta["students"]
    if a.reference_epochs and a.reference_epochs != meta["reference_epochs"]:
        raise SystemExit(f"this study's reference is {meta['reference_epochs']} epochs (students.json); "
                         f"start another --out for {a.reference_epochs}")
    protocols = ladder(meta["train_split"])
    if a.protocols:
        unknown = sorted(set(a.protocols) - set(protocols) - {SUPERNET})
        if unknown:
            raise SystemExit(f"--protocols: unknown {unknown}; the ladder's are {', '.join(protocols)}")
        protocols = {k: v for k, v in protocols.items() if k in a.protocols}
    ips = a.images_per_second or IMAGES_PER_SECOND.get(a.env, 250.0)
    supernet = None
    if (folder / "supernet.pt").exists() and (not a.protocols or SUPERNET in a.protocols):
        from n2n_gym.utils.files import file_sha256

        supernet = {"supernet": file_sha256(folder / "supernet.pt"), "bn_recalibration": min(2048, meta["train_split"]),
                    "val_images": 2000}
    todo_all = items(students, protocols, meta["reference_epochs"], meta["stability_students"], supernet)
    k, n = a.shard
    done = {item_key(r) for r in read_scores(folder)}
    mine = [it for i, it in enumerate(todo_all) if i % n == k]
    todo = [it for it in mine if item_key(it) not in done]
    finished_before = len(mine) - len(todo)
    if a.max_items:
        todo = todo[:a.max_items]
    arch = {s["id"]: s["architecture"] for s in students}
    est = sum(_estimate_seconds(it, meta["train_split"], ips) for it in todo)
    print(f"{a.env}: {len(students)} students, {len(todo_all)} items, shard {k}/{n} holds {len(mine)}: "
          f"{finished_before} done, {len(todo)} to run now on {a.workers} worker(s): about {est / 3600 / a.workers:.1f} h "
          f"({est / 3600:.1f} CPU-hours at {ips:.0f} img/s). Results: {folder}", flush=True)
    if not todo:
        return 0
    out = folder / (f"scores-{k}of{n}.jsonl" if n > 1 else "scores.jsonl")
    ctx = mp.get_context("spawn")  # fork after torch threads can deadlock (PyTorch's known issue)
    start, spent = time.time(), 0.0
    with cf.ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(a.env, a.nice, os.getpid())) as pool:
        queue, pending = list(todo), {}

        def submit() -> None:
            it = queue.pop(0)
            pending[pool.submit(_run_item, it, arch[it["student"]], str(folder))] = it

        for _ in range(min(a.workers * 2, len(queue))):
            submit()
        finished = failures = 0
        while pending:
            done_now, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done_now:
                it = pending.pop(fut)
                row = fut.result()
                if "failed" in row:  # not a score: left to run again (its checkpoint kept)
                    failures += 1
                    print(f"student {row['student']} {row['protocol']} seed {row['seed']} FAILED, not recorded: "
                          f"{row['failed'][:300]}", flush=True)
                    if queue:
                        submit()
                    continue
                _append(out, row)
                finished += 1
                spent += _estimate_seconds(it, meta["train_split"], ips)
                eta = (est - spent) * (time.time() - start) / spent
                print(f"[{finished}/{len(todo)}] student {row['student']:>2} {row['protocol']:<13} seed {row['seed']} "
                      f"val {row['accuracy']:.4f} reward {row['reward']:+.4f} {row['seconds']:.0f} s "
                      f"| ETA {eta / 3600:.2f} h", flush=True)
                if queue:
                    submit()
    if failures:
        print(f"{failures} item(s) failed for reasons not the student's own and were not recorded: run again",
              flush=True)
        return 1
    return 0


def cmd_supernet(a: argparse.Namespace) -> int:
    """Train the study's supernet (resumable), then write ``supernet.pt``; a later ``run``
    scores every student with it as the candidate ``supernet-bn``."""
    import gymnasium as gym
    import torch

    import n2n_gym  # noqa: F401
    from n2n_gym.evaluation.supernet import (
        progress_printer,
        save_supernet,
        train_supernet,
    )

    folder = pathlib.Path(a.out or RESULTS / slug(a.env))
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if a.nice:
        os.nice(a.nice)
    ev = gym.make(a.env, cache=False, progress=False).unwrapped.evaluator
    steps = a.epochs * (min(a.train_images or 10**9, len(ev.data.train_idx)) // 64)
    print(f"{a.env}: supernet of {ev.teacher.params:,} params, {a.epochs} epochs = {steps} steps of 64 images and "
          f"{2 + a.random_students} students each (resumable: {folder / 'supernet.ckpt'})", flush=True)
    start = time.time()
    supernet = train_supernet(ev.teacher.module, ev.data, epochs=a.epochs, random_students=a.random_students,
                              seed=a.seed, train_images=a.train_images, checkpoint=folder / "supernet.ckpt",
                              on_step=progress_printer(50))
    save_supernet(folder / "supernet.pt", supernet, teacher_sha256=ev.teacher.sha256, data_digest=ev.data.digest,
                  epochs=a.epochs, random_students=a.random_students, seed=a.seed,
                  seconds_this_invocation=time.time() - start)
    from n2n_gym.evaluation.supernet import supernet_file_name, supernet_sha256

    sha = supernet_sha256(folder / "supernet.pt")
    print(f"wrote {folder / 'supernet.pt'}; `run` now adds the candidate {SUPERNET}.\nIts weights' sha256: {sha}. "
          f"As an env protocol (Protocol(init='supernet', supernet='{sha}', ...)): copy the file into a folder on "
          f"$N2N_TEACHERS as {supernet_file_name(sha)}", flush=True)
    return 0


def _bootstrap(x: np.ndarray, y: np.ndarray, stat, n: int, rng: np.random.Generator) -> tuple[float, float]:
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(set(x[idx])) > 1 and len(set(y[idx])) > 1:
            vals.append(stat(x[idx], y[idx]))
    if not vals:
        return (math.nan, math.nan)
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def rank_shift_by_kind(a: dict, b: dict, kinds: dict, resamples: int, rng: np.random.Generator) -> dict:
    """Per kind of student (random, record, magnitude, removal): the mean shift of its reward's
    percentile rank under protocol ``a`` against the reference ``b`` (-0.2: ranked 20 points of
    the population lower than training ranks it), with a bootstrap 95 % interval over the
    kind's students. Tests issue 19's hypothesis that brief training after inheritance
    punishes layer removal more than training to convergence does (a negative "removal")."""
    from scipy.stats import rankdata

    ids = sorted(set(a) & set(b))
    n = len(ids)
    shift = (rankdata([a[i]["reward"] for i in ids]) - rankdata([b[i]["reward"] for i in ids])) / n
    out = {}
    for kind in sorted({kinds[i] for i in ids}):
        x = np.array([s for i, s in zip(ids, shift) if kinds[i] == kind])
        out[kind] = {"students": int(len(x)), "mean": float(np.mean(x)), "ci95": None}  # None: one student
        if len(x) > 1:
            boot = [float(np.mean(rng.choice(x, len(x)))) for _ in range(resamples)]
            out[kind]["ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


def summarise(folder: pathlib.Path, resamples: int = 2000) -> dict:
    """The ladder's figures from the committed per-item scores of ``folder``."""
    from scipy.stats import kendalltau, spearmanr

    meta = json.loads((folder / "students.json").read_text())
    rows = read_scores(folder)
    by: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["student"], r["protocol"]), []).append(r)
    names = [SUPERNET] + list(ladder(meta["train_split"])) + [f"mse-8k x{SEEDS_AVERAGED}"]

    def score(sid: int, name: str) -> dict | None:
        base = name.split(" x")[0]
        got = sorted(by.get((sid, base), []), key=lambda r: r["seed"])
        want = SEEDS_AVERAGED if " x" in name else 1
        got = got[:want] if " x" in name else [r for r in got if r["seed"] == 0]
        if len(got) < want:
            return None
        return {"reward": float(np.mean([r["reward"] for r in got])),
                "accuracy": float(np.mean([r["accuracy"] for r in got])), "params": got[0]["params"],
                "seconds": float(sum(r["seconds"] for r in got)),
                "load": float(np.mean([r.get("load", math.nan) for r in got]))}

    rng = np.random.default_rng(0)
    kinds = {s["id"]: s["kind"] for s in meta["students"]}
    ref = {s["id"]: score(s["id"], "reference") for s in meta["students"]}
    ref = {k: v for k, v in ref.items() if v is not None}
    out = {"env": meta["env"], "data_variant": meta["data_variant"], "teacher_sha256": meta["teacher_sha256"],
           "teacher_val_accuracy": meta["teacher_val_accuracy"], "teacher_test_accuracy": meta["teacher_test_accuracy"],
           "students": len(meta["students"]), "students_with_reference": len(ref),
           "reference": dataclasses.asdict(reference(meta["reference_epochs"])), "ladder": {}}

    def compare(a: dict, b: dict, fields=("reward", "accuracy")) -> dict:
        ids = sorted(set(a) & set(b))
        res = {"students": len(ids)}
        if len(ids) < 4:
            return res
        for field in fields:
            x = np.array([a[i][field] for i in ids])
            y = np.array([b[i][field] for i in ids])
            rho = lambda u, v: float(spearmanr(u, v).statistic)  # noqa: E731
            tau = lambda u, v: float(kendalltau(u, v).statistic)  # noqa: E731
            res[f"spearman_{field}"] = rho(x, y)
            res[f"spearman_{field}_ci95"] = _bootstrap(x, y, rho, resamples, rng)
            res[f"kendall_{field}"] = tau(x, y)
            res[f"kendall_{field}_ci95"] = _bootstrap(x, y, tau, resamples, rng)
        if len(ids) >= 10:
            top_ref = set(sorted(ids, key=lambda i: -b[i]["reward"])[:5])
            top_p = set(sorted(ids, key=lambda i: -a[i]["reward"])[:10])
            res["top5_in_top10"] = len(top_ref & top_p) / 5
        res["rank_shift_by_kind"] = rank_shift_by_kind(a, b, kinds, resamples, rng)
        res["median_seconds"] = float(np.median([a[i]["seconds"] for i in ids]))
        # seconds are on one thread of a shared machine: the 1-minute load average beside them
        res["median_load"] = float(np.nanmedian([a[i]["load"] for i in ids]))
        return res

    by_name = {}
    for name in names:
        scores = {s["id"]: score(s["id"], name) for s in meta["students"]}
        scores = {k: v for k, v in scores.items() if v is not None}
        if scores:  # a study run with --protocols has no scores for the others
            by_name[name] = scores
            out["ladder"][name] = compare(scores, ref)
    # Each protocol's accuracy calibrated to the reference's (n2n_gym.evaluation.calibration), its
    # reward computed from the estimate; leave-one-out, so each student's estimate comes from a
    # map fitted on the others: how the calibrated protocol would rank students it has not seen.
    from n2n_gym.evaluation.calibration import Calibration, leave_one_out
    from n2n_gym.evaluation.reward import n2n_reward
    from n2n_gym.ir.arch import Architecture

    chance = 1.0 / Architecture.from_json(meta["students"][0]["architecture"]).num_classes
    t_params, t_acc = meta["teacher_params"], meta["teacher_val_accuracy"]

    def reward(params: int, accuracy: float) -> float:
        return n2n_reward(student_params=params, teacher_params=t_params, student_accuracy=accuracy,
                          teacher_accuracy=t_acc).value

    out["calibrated"] = {}
    for name, scores in by_name.items():
        ids = sorted(set(scores) & set(ref))
        if len(ids) < 5:
            continue
        x, y = [scores[i]["accuracy"] for i in ids], [ref[i]["accuracy"] for i in ids]
        estimate = leave_one_out(x, y, chance)
        cal = {i: {**scores[i], "accuracy": e, "reward": reward(scores[i]["params"], e)} for i, e in zip(ids, estimate)}
        row = compare(cal, ref, ("reward",))
        row["fit"] = dict(zip(("intercept", "slope", "x_min", "chance"), Calibration.fit(x, y, chance).to_list()))
        row["median_abs_error_points"] = float(100 * np.median(np.abs(np.array(estimate) - np.array(y))))
        out["calibrated"][name] = row
    # The null every protocol must beat: R = Rc * Ra with every student at the teacher's accuracy
    # (Ra = 1), i.e. students ranked by size alone. Where trained students all come near the
    # teacher (digits), size alone ranks rewards well and a protocol's rho means little above it.
    size = {i: {"reward": reward(v["params"], t_acc), "seconds": 0.0, "load": 0.0} for i, v in ref.items()}
    out["size_only"] = {k: v for k, v in compare(size, ref, ("reward",)).items()
                        if k not in ("median_seconds", "median_load", "rank_shift_by_kind")}
    twice = {s["id"]: score(s["id"], "reference-2x") for s in meta["students"]}
    twice = {k: v for k, v in twice.items() if v is not None}
    out["reference_stability"] = compare(ref, twice)
    whole = [r["seconds"] for r in rows if r["protocol"] == "reference" and not r.get("resumed_at_epoch")]
    out["reference_median_seconds"] = float(np.median(whole)) if whole else None
    out["reference_val_accuracy"] = {
        "median": float(np.median([v["accuracy"] for v in ref.values()])) if ref else None,
        "max": float(max(v["accuracy"] for v in ref.values())) if ref else None}
    return out


#: The rule that picks an env's default protocol from its study (``choose``).
MIN_STUDENTS, RHO_TARGET = 40, 0.8


def choose(summary: dict, min_students: int = MIN_STUDENTS, target: float = RHO_TARGET) -> dict:
    """The default protocol the study's figures pick, as ``{"protocol", "calibrated", "rule_met",
    "why"}`` (``protocol`` None when no study has enough students).

    Candidates: every protocol of the ladder, as measured and calibrated. One *qualifies* with
    >= ``min_students`` students, Spearman rho of rewards >= ``target`` against the reference,
    information about accuracy (the lower end of its accuracy rho's 95 % interval above 0: else a
    flat calibration, which ranks by size alone, would pass wherever size alone does) and a top-5
    recall no worse than size alone's. The cheapest qualifying one is picked; if none qualifies,
    the highest rho of rewards among those with accuracy information, and ``rule_met`` is False.
    """
    null_top5 = summary.get("size_only", {}).get("top5_in_top10", 0.0)
    rows = []
    for name, raw in summary.get("ladder", {}).items():
        informative = (raw.get("spearman_accuracy_ci95") or (-1, 1))[0] > 0
        for calibrated, r in ((False, raw), (True, summary.get("calibrated", {}).get(name, {}))):
            if "spearman_reward" not in r or r["students"] < min_students:
                continue
            ok = (r["spearman_reward"] >= target and informative
                  and r.get("top5_in_top10", 0.0) >= null_top5)
            rows.append((ok, informative, calibrated, name, r))
    if not rows:
        return {"protocol": None, "calibrated": False, "rule_met": False,
                "why": f"no protocol has >= {min_students} students with a reference yet"}
    qualified = sorted((r["median_seconds"], -r["spearman_reward"], c, n) for ok, _, c, n, r in rows if ok)
    if qualified:
        seconds, rho, calibrated, name = qualified[0]
        return {"protocol": name, "calibrated": calibrated, "rule_met": True,
                "why": f"cheapest at rho >= {target} with accuracy information ({-rho:.2f}, {seconds:.1f} s)"}
    best = max(((r["spearman_reward"], c, n) for _, inf, c, n, r in rows if inf), default=None)
    if best is None:
        return {"protocol": None, "calibrated": False, "rule_met": False,
                "why": "no protocol carries information about accuracy"}
    return {"protocol": best[2], "calibrated": best[1], "rule_met": False,
            "why": f"none reaches rho {target}; the best measured ({best[0]:.2f})"}


def cmd_report(a: argparse.Namespace) -> int:
    folder = pathlib.Path(a.out or RESULTS / slug(a.env))
    if not (folder / "students.json").exists():
        raise SystemExit(f"no study in {folder}: run `python -m n2n_gym.benchmarks.fidelity run --env {a.env}` first")
    summary = summarise(folder, a.resamples)
    summary["choice"] = choose(summary)
    from n2n_gym.utils.files import atomic_write_text

    atomic_write_text(folder / "ladder.json", json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in summary["ladder"].items():
        if "spearman_reward" not in r:
            continue
        lo, hi = r["spearman_reward_ci95"]
        ax.errorbar(r["median_seconds"], r["spearman_reward"],
                    yerr=[[r["spearman_reward"] - lo], [hi - r["spearman_reward"]]], fmt="o", capsize=3)
        ax.annotate(name, (r["median_seconds"], r["spearman_reward"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    for name, r in summary.get("calibrated", {}).items():
        if "spearman_reward" in r:
            ax.scatter(r["median_seconds"], r["spearman_reward"], marker="o", facecolors="none", edgecolors="black",
                       s=40, zorder=3, label="calibrated (leave-one-out)" if name == next(iter(summary["calibrated"]))
                       else None)
    ax.axhline(0.8, color="grey", ls="--", lw=1, label="target rho 0.8")
    null = summary.get("size_only", {}).get("spearman_reward")
    if null is not None:
        ax.axhline(null, color="tab:red", ls=":", lw=1.2, label=f"size alone (accuracy = teacher's): rho {null:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per student (median, 1 CPU thread)")
    ax.set_ylabel("Spearman rho of rewards vs reference")
    n = summary["students_with_reference"]
    ax.set_title(f"{summary['env']} ({summary['data_variant']}): fidelity ladder, {n} students", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "ladder.png", dpi=120)
    print(json.dumps({k: v for k, v in summary.items() if k != "reference"}, indent=1))
    return 0


def _shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not int(m[1]) < int(m[2]):
        raise argparse.ArgumentTypeError(f"--shard is K/N with 0 <= K < N (e.g. 0/2), got {text!r}")
    return int(m[1]), int(m[2])


_positive, _non_negative = int_at_least(1), int_at_least(0)


def _env_id(text: str) -> str:
    """A registered env id (Gymnasium's error, with its closest ids, for another: a typo would
    otherwise read as 'no study' or start a study under the wrong name)."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401 - registers the ids

    text = canonical_env_id(text)
    try:
        gym.spec(text)
    except gym.error.Error as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="score the study's students (resumable: appends each finished item)")
    r.add_argument("--env", type=_env_id, default="N2N-ResNet20-CIFAR10-v0")
    r.add_argument("--out", help="study folder (default: benchmarks/results/fidelity/<env>)")
    r.add_argument("--workers", type=_positive, default=2)
    r.add_argument("--shard", type=_shard, default=(0, 1), help="K/N: run the items with index K mod N")
    r.add_argument("--random", type=int, default=16, help="uniform random joint students")
    r.add_argument("--records", type=int, default=8, help="best students of the committed records")
    r.add_argument("--magnitude", type=int, default=8, help="magnitude-pruned students, 2-10x")
    r.add_argument("--removal", type=int, default=8, help="removal-only students")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--reference-epochs", type=_positive, default=None)
    r.add_argument("--stability-students", type=_non_negative, default=None,
                   help="students also run at 2x reference epochs (default 8; given for a drawn study, it is updated)")
    r.add_argument("--max-items", type=int, default=0, help="stop after this many items (0: all)")
    r.add_argument("--nice", type=int, default=10)
    r.add_argument("--images-per-second", type=float, default=None,
                   help="training images/s of one thread, for the time estimate only (default: per env)")
    r.add_argument("--protocols", type=lambda t: [x for x in t.split(",") if x],
                   help="comma-separated subset of the ladder (default: all of it)")
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("supernet", help="train the weight-sharing supernet candidate (resumable)")
    t.add_argument("--env", type=_env_id, default="N2N-ResNet20-CIFAR10-v0")
    t.add_argument("--out")
    t.add_argument("--epochs", type=_positive, default=12)
    t.add_argument("--random-students", type=int, default=2, help="random students per step (+ largest, smallest)")
    t.add_argument("--train-images", type=_positive, default=None, help="train on the first N images only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--nice", type=int, default=10)
    t.set_defaults(func=cmd_supernet)
    s = sub.add_parser("report", help="the ladder's figures and plot from the scores so far")
    s.add_argument("--env", type=_env_id, default="N2N-ResNet20-CIFAR10-v0")
    s.add_argument("--out")
    s.add_argument("--resamples", type=_positive, default=2000)
    s.set_defaults(func=cmd_report)
    a = p.parse_args(argv)
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
