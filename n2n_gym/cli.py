"""The ``n2n-gym`` command line.

- ``n2n-gym episode``: a few random (mask-respecting) episodes on an env, printing each
  student's reward and its layer table.
- ``n2n-gym compress``: the N2N search (``agents/n2n.py``: removal, then shrinkage), a
  final longer distillation of the best student, exports, a report and plots, all in a
  run folder; ``--resume`` continues a killed run without losing an evaluated student.
  ``--model package.module:factory [--checkpoint weights.pt] --dataset npz:/path.npz``
  compresses your own network instead of a zoo teacher (``N2N-Custom-v0``).
- ``n2n-gym teacher list | train ID | verify ID | pin ID PATH``: the pinned teachers
  (``n2n_gym.teachers.registry``).

Run folder of ``compress``::

    config.json      the settings (``--resume`` reuses them)
    state.pt         search state after the last completed policy update (atomic)
    history.jsonl    every evaluated student, one JSON line each, appended and flushed
    policies.pt      the trained policies (``--load-policy`` of a later search)
    student.json/.pt the best student after the final distillation: n2n_gym.load_student(folder)
    student.pt2      torch.export program;  student.onnx  ONNX (dynamo exporter)
    teacher.pt2/.onnx the teacher's exports, for the latency comparison (n2n_gym.evaluation.deploy)
    final.ckpt       the final distillation's checkpoint after each epoch (--resume continues it);
                     magnitude.ckpt, thin.ckpt: the same for the same-size alternatives (--compare)
    report.json/.txt teacher vs best student vs the alternatives, latency;  rewards.png, pareto.png

Before the search it prints an estimate of the whole run's duration (an upper bound: the
teacher's architecture timed on this machine, ``n2n_gym.evaluation.final.throughput``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any

from n2n_gym.bench.leaderboard import pareto_front
from n2n_gym.utils.checks import int_at_least, json_object
from n2n_gym.utils.devices import resolve_device
from n2n_gym.utils.files import atomic_torch_save, atomic_write_text, remove_stale_temps

RUNS_ROOT = pathlib.Path("runs")
DEFAULT_FINAL_EPOCHS = 30


# ---------------------------------------------------------------------------- helpers
def read_history(path: pathlib.Path) -> list[dict]:
    """The records of a history file; a line cut short by a kill is skipped."""
    rows = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _fmt_int(n) -> str:
    return f"{int(n):,}" if n is not None else "-"


def _fmt_acc(a) -> str:
    return f"{100 * a:.2f}%" if a is not None else "-"


# ---------------------------------------------------------------------------- episode
def cmd_episode(ns: argparse.Namespace) -> int:
    import gymnasium as gym
    import numpy as np

    import n2n_gym  # noqa: F401

    protocol = {"protocol": ns.protocol} if ns.protocol is not None else {}  # None: the id's own
    env = gym.make(ns.env, **{**protocol, "device": ns.device, **ns.env_kwargs, "stage": ns.stage,
                              "render_mode": "ansi"})
    rng = np.random.default_rng(ns.seed)
    for ep in range(ns.episodes):
        obs, info = env.reset(seed=ns.seed if ep == 0 else None)
        terminated = False
        while not terminated:
            action = int(rng.choice(np.flatnonzero(info["action_mask"])))
            obs, reward, terminated, truncated, info = env.step(action)
        print(f"episode {ep}: reward {reward:.4f}  valid={info['valid']}  val acc {_fmt_acc(info['accuracy'])} "
              f"(teacher {_fmt_acc(info['teacher_accuracy'])})  test acc {_fmt_acc(info['test_accuracy'])}  "
              f"params {_fmt_int(info['params'])} / {_fmt_int(info['teacher_params'])} "
              f"({info['compression']:.2f}x)  eval {info['eval_seconds']:.2f}s{' (cached)' if info['cached'] else ''}")
        if info["reason"]:
            print(f"  invalid: {info['reason']}")
        print(env.render())
        print()
    env.close()
    return 0


# ---------------------------------------------------------------------------- compress
def _custom_teacher(ns: argparse.Namespace) -> None:
    """``--model``/``--checkpoint``/``--dataset``: compress the user's network on N2N-Custom-v0.
    The env gets the factory spec and the checkpoint's absolute path (JSON, so config.json
    and --resume hold them); the model is imported once here so that an unsupported one is
    refused before a run folder exists."""
    if ns.checkpoint is not None and ns.model is None:
        raise SystemExit("n2n-gym compress: --checkpoint goes with --model package.module:factory "
                         "(a zoo env's teacher checkpoint is --env-kwargs '{\"teacher_checkpoint\": ...}')")
    if ns.dataset is not None:
        ns.env_kwargs = {**ns.env_kwargs, "dataset": ns.dataset}
    if ns.model is None:
        return
    from n2n_gym.data.datasets import dataset_info
    from n2n_gym.envs.registration import CUSTOM_ENV_ID, DEFAULT_ENV_ID
    from n2n_gym.teachers.importer import import_teacher

    if ns.env_id not in (DEFAULT_ENV_ID, CUSTOM_ENV_ID):
        raise SystemExit(f"n2n-gym compress: --model runs on {CUSTOM_ENV_ID}, not on --env {ns.env_id}; drop --env")
    checkpoint = str(pathlib.Path(ns.checkpoint).resolve()) if ns.checkpoint else None
    dataset = ns.env_kwargs.get("dataset", "digits")
    try:
        imported = import_teacher(ns.model, dataset_info(dataset), checkpoint)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"n2n-gym compress: {exc}") from None
    print(f"imported {ns.model}: {len(imported.architecture)} layers, {imported.architecture.params:,} params, "
          f"logits reproduced within {imported.max_abs_diff:.1e}" + "".join(f"; {n}" for n in imported.notes),
          file=sys.stderr)
    ns.env_id = CUSTOM_ENV_ID
    ns.env_kwargs = {**ns.env_kwargs, "teacher_module": ns.model, "teacher_checkpoint": checkpoint,
                     "dataset": dataset}


#: What makes a folder a run of ``compress`` (written at its first update).
RUN_FILES = ("state.pt", "history.jsonl")


def _run_dir(ns: argparse.Namespace) -> tuple[pathlib.Path, bool]:
    """(run folder, resuming?). A new run's ``--out`` that is a non-empty folder holding no
    run is the user's: the run goes to a fresh sub-folder of it, said in one line."""
    if ns.resume is not None:
        if ns.resume:
            return pathlib.Path(ns.resume), True
        if ns.out:
            return pathlib.Path(ns.out), True
        runs = sorted((p for p in RUNS_ROOT.glob("*") if (p / "config.json").exists()),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SystemExit(f"n2n-gym compress --resume: no run folder under {RUNS_ROOT}/; pass the folder")
        return runs[-1], True
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ns.env_id).strip("-").lower()
    fresh = f"{slug}-seed{ns.seed}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if ns.out:
        out = pathlib.Path(ns.out)
        # a folder of the user's (files, no run of ours): its config.json, student.pt, ... are never
        # overwritten; a folder holding a run is refused later (--resume continues it)
        if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in RUN_FILES):
            print(f"{out} holds files that are not an n2n-gym run: this run goes to {out / fresh}", file=sys.stderr)
            return out / fresh, False
        return out, False
    return RUNS_ROOT / fresh, False


def _final_distill(unwrapped, arch, epochs: int, seed: int, lr: float,
                   checkpoint: pathlib.Path | None = None) -> tuple[Any, float, float, float]:
    """(module, val, test, seconds) of ``n2n_gym.evaluation.final.final_distill`` (resumable from ``checkpoint``)."""
    from n2n_gym.evaluation.final import final_distill

    module, row = final_distill(unwrapped.evaluator, arch, epochs, lr, seed, checkpoint=checkpoint)
    return module, row["val_accuracy"], row["test_accuracy"], row["seconds"]


def _print_estimate(search, done: int, args, final_epochs: int, final_students: int) -> None:
    """The run's duration, estimated before it starts from a timing of the teacher's
    architecture now (``n2n_gym.evaluation.final.throughput``): an upper bound, as students are smaller."""
    import gymnasium as gym

    from n2n_gym.evaluation.final import estimate_seconds, throughput
    from n2n_gym.evaluation.protocols import get_protocol

    env = gym.make(args.env_id, **{"protocol": args.protocol, "device": args.device, **args.env_kwargs})
    ev = env.unwrapped.evaluator
    rates = throughput(ev)
    env.close()
    data = ev.data
    est = estimate_seconds(rates, get_protocol(args.protocol), search.total_evaluations - done, len(data.train_idx),
                           len(data.val_idx), len(data.y_test), final_epochs, final_students)
    total = est["search"] + est["final"]
    print(f"estimated duration (upper bound, students timed as the teacher at {rates['augmented']:.0f} / "
          f"{rates['reused_logits']:.0f} img/s now): {_duration(total)} = search {_duration(est['search'])} "
          f"({search.total_evaluations - done} students, cache hits free) + final distillation "
          f"{_duration(est['final'])} ({final_students} student(s) x {final_epochs} epochs)", file=sys.stderr)


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else (f"{m} min" if m else f"{seconds:.0f} s")


def _latency(run_dir: pathlib.Path, teacher, arch, exports: dict, rounds: int) -> dict | None:
    """Teacher against student through the exported files (``n2n_gym.evaluation.deploy.compare``), or
    ``None`` when skipped; a runtime that fails is reported, never fatal to the run."""
    if rounds <= 0 or not exports:
        return None
    from n2n_gym.evaluation import deploy
    from n2n_gym.ir.students import export_student

    teacher_files = export_student(teacher.module.cpu(), run_dir, stem="teacher")
    files = {who: {rt: f[key] for rt, key in (("onnxruntime", "onnx"), ("torch.export", "torch.export"))
                   if key in f and not f[key].startswith("failed")} for who, f in (("teacher", teacher_files),
                                                                                      ("student", exports))}
    try:
        return deploy.compare(files["teacher"], files["student"], arch.input_shape, (1, 256), rounds=rounds,
                              teacher_params=teacher.params, student_params=arch.params,
                              teacher_flops=teacher.architecture.flops, student_flops=arch.flops)
    except (ValueError, RuntimeError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _latency_text(latency: dict | None) -> str:
    if latency is None:
        return ""
    if "error" in latency:
        return f"latency not measured: {latency['error']}\n\n"
    from n2n_gym.evaluation.deploy import table

    return f"Inference through the exported files (teacher.* vs student.*):\n\n{table(latency)}\n\n"


def _plots(run_dir: pathlib.Path, history: list[dict], final: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"remove": "tab:blue", "shrink": "tab:orange", "joint": "tab:green"}
    # reward and best so far vs evaluations
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["evaluation"] for r in history]
    for stage in dict.fromkeys(r["stage"] for r in history):
        rows = [r for r in history if r["stage"] == stage]
        ax.scatter([r["evaluation"] for r in rows], [r["reward"] for r in rows], s=10, alpha=0.6,
                   color=colors.get(stage), label=f"stage {stage}")
    best, curve = -math.inf, []
    for r in history:
        best = max(best, r["reward"])
        curve.append(best)
    ax.plot(xs, curve, color="black", lw=1.5, label="best so far")
    starts = [r["evaluation"] for a, r in zip(history, history[1:]) if a["stage_index"] != r["stage_index"]]
    for s in starts:
        ax.axvline(s - 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("student evaluations")
    ax.set_ylabel("reward R = Rc * Ra (-1: invalid)")
    ax.set_ylim(max(-1.05, min([r["reward"] for r in history] + [0]) - 0.05), 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("N2N search: reward per evaluated student")
    fig.tight_layout()
    fig.savefig(run_dir / "rewards.png", dpi=120)
    plt.close(fig)
    paths.append(str(run_dir / "rewards.png"))

    # accuracy vs params, Pareto front
    valid = [r for r in history if r.get("valid")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for stage in dict.fromkeys(r["stage"] for r in valid):
        rows = [r for r in valid if r["stage"] == stage]
        ax.scatter([r["params"] for r in rows], [100 * r["accuracy"] for r in rows], s=10, alpha=0.5,
                   color=colors.get(stage), label=f"students, stage {stage}")
    if valid:
        uniq = {r["architecture"]: r for r in valid}
        pts = [(r["params"], r["accuracy"]) for r in uniq.values()]
        front = pareto_front(pts)
        ax.step([p for p, _ in front], [100 * a for _, a in front], where="post", color="red", lw=1.2)
        ax.scatter([p for p, _ in front], [100 * a for _, a in front], s=25, facecolors="none", edgecolors="red",
                   label="Pareto front")
        t = valid[0]
        ax.scatter([t["teacher_params"]], [100 * t["teacher_accuracy"]], marker="*", s=150, color="black",
                   label="teacher")
    if final:
        ax.scatter([final["params"]], [100 * final["val_accuracy"]], marker="D", s=50, color="green",
                   label="best student, final distillation")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy vs size: students at search time (low fidelity);\n"
                 "teacher and final student on the whole validation split", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "pareto.png", dpi=120)
    plt.close(fig)
    paths.append(str(run_dir / "pareto.png"))
    return paths


ALTERNATIVE_LABELS = {"magnitude": "uniform L1 magnitude pruning", "thin": "hand-designed thin, random init"}


def _report_table(teacher: dict, search: dict, final: dict | None, protocol: str,
                  others: dict | None = None) -> str:
    rows = [("teacher", teacher), (f"best student, search ({protocol} protocol)", search)]
    if final:
        rows.append(("best student, final distillation", final))
    rows += [(f"{ALTERNATIVE_LABELS[k]}, same size", r) for k, r in (others or {}).items()]
    head = f"{'':<42} {'val acc':>8} {'test acc':>8} {'params':>10} {'FLOPs':>12} {'compr.':>7} {'reward':>7}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        comp = f"{r['compression']:.2f}x" if r.get("compression") else "1.00x"
        rew = f"{r['reward']:.4f}" if r.get("reward") is not None else "-"
        lines.append(f"{name:<42} {_fmt_acc(r['val_accuracy']):>8} {_fmt_acc(r['test_accuracy']):>8} "
                     f"{_fmt_int(r['params']):>10} {_fmt_int(r['flops']):>12} {comp:>7} {rew:>7}")
    return "\n".join(lines)


def cmd_compress(ns: argparse.Namespace) -> int:
    import gymnasium as gym
    import torch
    from tqdm.auto import tqdm

    import n2n_gym  # noqa: F401
    from n2n_gym.agents.n2n import N2N, Args, save_policies
    from n2n_gym.evaluation.protocols import get_protocol
    from n2n_gym.evaluation.reward import n2n_reward
    from n2n_gym.ir.arch import Architecture
    from n2n_gym.ir.students import export_student, save_student

    t_start = time.perf_counter()
    if ns.resume is None:
        _custom_teacher(ns)
        if not ns.model:  # (--model was imported and checked just now)
            # a wrong env id or env kwarg fails here, before a run folder is made (gym.make is cheap)
            gym.make(ns.env_id, **{"protocol": ns.protocol, "device": ns.device, **ns.env_kwargs}).close()
    run_dir, resuming = _run_dir(ns)
    try:  # an unwritable run folder fails now, not after the search
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-check-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"n2n-gym compress: cannot write the run folder {run_dir} ({exc.strerror or exc}); "
                         "choose another --out") from exc
    for stale in remove_stale_temps(run_dir):  # left by a run killed mid-write
        print(f"removed {stale}, a temporary file of an interrupted write", file=sys.stderr)
    config_path, state_path, history_path = run_dir / "config.json", run_dir / "state.pt", run_dir / "history.jsonl"
    arg_names = {f.name for f in dataclasses.fields(Args)}
    if resuming:
        if not config_path.exists():
            raise SystemExit(f"n2n-gym compress --resume: {run_dir} holds no config.json; nothing to resume")
        config = json.loads(config_path.read_text())
        print(f"resuming {run_dir} (its config.json; options given now are ignored)", file=sys.stderr)
    else:
        if any((run_dir / f).exists() for f in RUN_FILES):
            raise SystemExit(f"n2n-gym compress: {run_dir} already holds a run; pass --resume to continue it "
                             "or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(ns).items() if k not in ("func", "resume", "out", "progress", "command")}
        atomic_write_text(config_path, json.dumps(config, indent=1, sort_keys=True))
    args = Args(**{k: v for k, v in config.items() if k in arg_names})
    args.progress = ns.progress
    if not ns.progress:  # also silence the env's teacher-training bar (not saved in config.json)
        args.env_kwargs = {"progress": False, **args.env_kwargs}
    final_epochs, export = int(config.get("final_epochs", DEFAULT_FINAL_EPOCHS)), bool(config.get("export", True))
    final_lr = float(config.get("final_lr", 1e-3))

    # ---- resume: keep the students of completed updates, redo the interrupted one
    state = None
    if resuming and state_path.exists():
        try:  # a run folder may come from elsewhere: loading it never runs code
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
            raise SystemExit(f"n2n-gym compress --resume: {state_path} cannot be read as a search state "
                             f"({type(exc).__name__}); start a new run with another --out") from exc
    done_key = (state["stage_index"], state["update"]) if state else (0, 0)
    kept = [r for r in read_history(history_path) if (r["stage_index"], r["update"]) < done_key]
    if state and len(kept) != state["evaluations"]:
        print(f"warning: history holds {len(kept)} students of completed updates, the state "
              f"{state['evaluations']}", file=sys.stderr)
    atomic_write_text(history_path, "".join(json.dumps(r) + "\n" for r in kept))
    history_file = open(history_path, "a")

    bar: Any = None

    def on_student(record: dict) -> None:
        try:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()
        except OSError as exc:  # e.g. a full disk: name the file; the students before it are kept
            raise OSError(exc.errno, f"cannot append to {history_path}: {exc.strerror}; free disk space, then "
                                     f"n2n-gym compress --resume {run_dir}") from exc
        bar.update(1)
        bar.set_postfix_str(f"stage {record['stage']}, update {record['update']}, best reward "
                            f"{search.best['reward']:.4f}")

    def on_update(s: N2N) -> None:
        atomic_torch_save(s.state_dict(), state_path)

    search = N2N(args, on_student=on_student, on_update=on_update)
    if state:
        search.load_state_dict(state, history=kept)
    compare = tuple(c for c in str(config.get("compare", "magnitude,thin")).split(",") if c)
    _print_estimate(search, len(kept), args, final_epochs, 1 + len(compare))
    bar = tqdm(total=search.total_evaluations, initial=len(kept), unit="student", desc="n2n-gym compress",
               disable=not ns.progress, dynamic_ncols=True)
    if search.best:
        bar.set_postfix_str(f"best reward {search.best['reward']:.4f}")
    t_search = time.perf_counter()
    try:
        search.run()
    finally:
        bar.close()
        history_file.close()
    search_seconds = time.perf_counter() - t_search
    save_policies(search, run_dir / "policies.pt")
    history = read_history(history_path)
    best = search.best
    if best is None or not best.get("valid"):
        print("no valid student was found; nothing to distil or export", file=sys.stderr)
        atomic_write_text(run_dir / "report.json", json.dumps({"best": best, "students": len(history)}, indent=1))
        return 1

    # ---- final distillation of the best student, exports, report, plots
    env = gym.make(args.env_id, **{"protocol": args.protocol, "device": args.device, **args.env_kwargs})
    unwrapped = env.unwrapped
    arch = Architecture.from_json(best["architecture"])
    teacher = unwrapped.teacher
    print(f"final distillation of the best student ({final_epochs} epochs over the training split) ...",
          file=sys.stderr)
    module, val_acc, test_acc, final_seconds = _final_distill(unwrapped, arch, final_epochs, args.seed, final_lr,
                                                              run_dir / "final.ckpt")
    reward = n2n_reward(student_params=arch.params, teacher_params=teacher.params, student_accuracy=val_acc,
                        teacher_accuracy=teacher.val_accuracy).value
    data = unwrapped.evaluator.data
    protocol = get_protocol(args.protocol)
    teacher_row = {"val_accuracy": teacher.val_accuracy, "test_accuracy": teacher.test_accuracy,
                   "params": teacher.params, "flops": teacher.architecture.flops, "compression": 1.0, "reward": None}
    search_row = {"val_accuracy": best["accuracy"], "test_accuracy": best["test_accuracy"], "params": best["params"],
                  "flops": best["flops"], "compression": best["compression"], "reward": best["reward"],
                  "stage": best["stage"], "evaluation": best["evaluation"]}
    final_row = {"val_accuracy": val_acc, "test_accuracy": test_acc, "params": arch.params, "flops": arch.flops,
                 "compression": teacher.params / arch.params, "reward": reward, "epochs": final_epochs,
                 "seconds": final_seconds}
    others = {}
    if compare:
        from n2n_gym.evaluation.final import alternatives

        print(f"the same final distillation for {', '.join(compare)} at the student's size ...", file=sys.stderr)
        try:
            others = alternatives(unwrapped.evaluator, unwrapped.start_architecture, arch.params, final_epochs,
                                  final_lr, args.seed, compare, unwrapped.min_width, checkpoints=run_dir)
        except ValueError as exc:  # a student smaller than any uniform one: said, not fatal
            print(f"alternatives not trained: {exc}", file=sys.stderr)
        for r in others.values():
            r["reward"] = n2n_reward(student_params=r["params"], teacher_params=teacher.params,
                                     student_accuracy=r["val_accuracy"], teacher_accuracy=teacher.val_accuracy).value
    save_student(run_dir, module.cpu(), env_id=args.env_id, teacher=teacher.summary(),
                 normalization={"mean": list(data.info.mean), "std": list(data.info.std), "scale": "x / 255"},
                 metrics=final_row, search_metrics=search_row)
    t_export = time.perf_counter()
    exports = export_student(module, run_dir) if export else {}
    latency = _latency(run_dir, teacher, arch, exports, int(config.get("latency_rounds", 3)))
    export_seconds = time.perf_counter() - t_export
    plots = _plots(run_dir, history, final_row)
    table = _report_table(teacher_row, search_row, final_row, protocol.name, others)
    n_val, n_test = len(data.val_idx), len(data.y_test)
    notes = (
        f"Accuracies: teacher on the whole validation ({n_val}) and test ({n_test}) splits. Search rows are "
        f"LOW FIDELITY: protocol '{protocol.name}' ({protocol.epochs} epoch(s) of distillation on "
        f"{protocol.train_images or 'all'} training images, scored on {min(protocol.val_images or n_val, n_val)} "
        f"validation / {min(protocol.test_images or n_test, n_test)} test images); they are what the reward "
        f"used. Final rows: after the final distillation ({final_epochs} epochs over the whole training split), "
        f"on the whole splits. Reward R = Rc * Ra uses validation accuracy; test accuracy is reported only. "
        f"FLOPs: 2 per multiply-accumulate.")
    total_seconds = time.perf_counter() - t_start
    report = {
        "env_id": args.env_id, "run_dir": str(run_dir), "args": dataclasses.asdict(args), "final_epochs": final_epochs,
        "teacher": teacher_row, "search_best": search_row, "final": final_row,
        "alternatives": {k: {f: v for f, v in r.items() if f != "architecture"} for k, r in others.items()},
        "students": len(history),
        "distinct_students": len({r["architecture"] for r in history if r.get("architecture")}),
        "student_architecture": arch.to_dict(), "exports": exports, "latency": latency, "plots": plots,
        "seconds": {"total_this_invocation": total_seconds, "search": search_seconds, "final_distillation": final_seconds,
                    "export": export_seconds},
        "notes": notes,
    }
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    text = (f"{table}\n\n{notes}\n\nbest student found at evaluation {best['evaluation']} (stage {best['stage']}) of "
            f"{len(history)}; {report['distinct_students']} distinct students; "
            f"{total_seconds:.0f} s (search {search_seconds:.0f} s, final distillation {final_seconds:.0f} s, "
            f"export and latency {export_seconds:.0f} s)\n\n{_latency_text(latency)}{arch.table()}\n")
    atomic_write_text(run_dir / "report.txt", text)
    print(text)
    for fmt, path in exports.items():
        print(f"{fmt}: {path}")
    print(f"run folder: {run_dir}   (n2n_gym.load_student({str(run_dir)!r}) loads the student)")
    env.close()
    return 0


# ---------------------------------------------------------------------------- teacher
#: training-set and evaluation (val + test) sizes of the named data sets (val 10 % of train),
#: so that `teacher list` estimates training time without loading the data
SPLIT_SIZES = {"mnist": (54000, 16000), "cifar10": (45000, 15000), "cifar100": (45000, 15000),
               "svhn": (65932, 33357)}


def _teacher_rows(ids: list[str], estimate: bool, device: str) -> list[dict]:
    import glob

    import torch  # noqa: F401

    from n2n_gym.data.datasets import dataset_info, load_dataset
    from n2n_gym.ir.zoo import teacher_architecture
    from n2n_gym.teachers import registry as reg
    from n2n_gym.teachers.teacher import (
        Recipe,
        default_recipe,
        estimate_training_seconds,
    )
    from n2n_gym.utils.files import default_cache_dir

    rows = []
    for env_id in ids:
        teacher, dataset, pin = reg.env_teacher(env_id)
        info = dataset_info(dataset)
        arch = teacher_architecture(teacher, info.input_shape, info.num_classes)
        recipe = Recipe(**pin.recipe) if pin else default_recipe(dataset)
        present = ""
        if pin and reg.candidates(pin):
            present = str(reg.candidates(pin)[0])
        else:  # trained here by the same recipe (the key also holds the data digest: not checked here)
            for side in glob.glob(str(default_cache_dir() / "teachers" / f"{teacher}-*.json")):
                try:
                    meta = json.loads(pathlib.Path(side).read_text())
                except (OSError, ValueError):
                    continue
                if meta.get("recipe") == dataclasses.asdict(recipe) and str(meta.get("data_variant", "")).startswith(dataset):
                    present = side[:-5] + ".pt"
        est = None
        if estimate:
            if dataset == "digits":
                d = load_dataset("digits")
                sizes = (len(d.train_idx), len(d.val_idx) + len(d.y_test))
            else:
                sizes = SPLIT_SIZES[dataset]
            est = estimate_training_seconds(arch, None, recipe, device, info=info, sizes=sizes).seconds
        rows.append({"id": env_id, "teacher": teacher, "dataset": dataset, "pin": pin.id if pin else None,
                     "sha256": pin.sha256 if pin else None, "val_accuracy": pin.val_accuracy if pin else None,
                     "test_accuracy": pin.test_accuracy if pin else None, "params": arch.params,
                     "file_bytes": pin.file_bytes if pin else None, "stored": bool(pin and pin.stored),
                     "present": present or None, "recipe_epochs": recipe.epochs, "estimated_train_seconds": est,
                     "train_seconds": pin.train_seconds if pin else None, "data_variant": pin.data_variant if pin else None})
    return rows


def cmd_teacher(ns: argparse.Namespace) -> int:
    from n2n_gym.envs.registration import ENVS
    from n2n_gym.teachers import registry as reg

    if ns.teacher_command == "list":
        from n2n_gym.teachers.teacher import format_duration

        ids = ns.ids or list(ENVS)
        rows = _teacher_rows(ids, ns.estimate, ns.device)
        if ns.json:
            print(json.dumps(rows, indent=1))
            return 0
        head = (f"{'env id':<26} {'teacher':<10} {'pinned sha256':<14} {'val acc':>7} {'test acc':>8} {'params':>11} "
                f"{'file':>8} {'present':<8} {'train here':>11}")
        print(head)
        print("-" * len(head))
        for r in rows:
            size = f"{r['file_bytes'] / 1e6:.1f} MB" if r["file_bytes"] else ("-" if r["pin"] is None else "not kept")
            est = format_duration(r["estimated_train_seconds"]) if r["estimated_train_seconds"] is not None else "-"
            print(f"{r['id']:<26} {r['teacher']:<10} {(r['sha256'] or 'not pinned')[:12]:<14} "
                  f"{_fmt_acc(r['val_accuracy']):>7} {_fmt_acc(r['test_accuracy']):>8} {r['params']:>11,} {size:>8} "
                  f"{'yes' if r['present'] else 'no':<8} {est:>11}")
        print(f"\ntrain here: estimated from timed training steps on {ns.device} with the recipe's threads "
              "(`--no-estimate` skips); present: the pinned file, or a teacher trained here by the same recipe, "
              "is on this machine. Pinned teachers: n2n_gym/teachers/pinned/registry.json.")
        return 0

    teacher, dataset, pin = reg.env_teacher(ns.id)
    if ns.teacher_command == "pin":
        p = reg.pin_teacher(ns.id, ns.path, store=ns.store, train_seconds=ns.train_seconds,
                            train_conditions=ns.conditions or "", legacy_sha256=tuple(ns.legacy_sha256),
                            legacy_note=ns.legacy_note)
        print(f"pinned {p.id}: {p.teacher} on {p.data_variant}, weights sha256 {p.sha256}, val {_fmt_acc(p.val_accuracy)}, "
              f"test {_fmt_acc(p.test_accuracy)}" + (f", stored as {reg.PINNED_DIR / p.file} ({p.file_bytes:,} bytes)"
                                                      if p.stored else ", not stored in the package (in this "
                                                      "machine's cache; others reproduce it by training)"))
        return 0


    from n2n_gym.data.datasets import load_dataset
    from n2n_gym.ir.zoo import teacher_architecture
    from n2n_gym.teachers.teacher import (
        Recipe,
        load_checkpoint,
        default_recipe,
        teacher_cache_path,
        train_teacher,
    )

    device = resolve_device(ns.device)
    data = load_dataset(dataset).to(device)
    recipe = Recipe(**pin.recipe) if pin else default_recipe(dataset)
    arch = teacher_architecture(teacher, data.info.input_shape, data.info.num_classes)
    if ns.teacher_command == "train":
        # always by the recipe, into the cache (resuming a .partial state), even where the
        # pinned file is present: this is how a pin is reproduced and checked
        path = teacher_cache_path(arch, data, recipe, device)
        if not path.exists():
            train_teacher(arch, data, recipe, path, device, progress=True)
        t = load_checkpoint(teacher, arch, path, data, device, verify_sidecar=True)
        t.source = "trained"
        print(f"{teacher} on {data.variant}: weights sha256 {t.sha256} ({t.source}, {t.path}); "
              f"val {_fmt_acc(t.val_accuracy)}, test {_fmt_acc(t.test_accuracy)}")
        if pin is None:
            return 0
        if t.sha256 == pin.sha256:
            print(f"matches the pinned {pin.id}")
            return 0
        print(f"DIFFERS from the pinned {pin.id} ({pin.sha256}): records made with the pinned teacher will not "
              "validate with this one", file=sys.stderr)
        return 1
    # verify: re-measure on the env's splits, check the content digest; never trains
    paths = (reg.candidates(pin) if pin else []) + [teacher_cache_path(arch, data, recipe, device)]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        print(f"{ns.id}: no {teacher} teacher on this machine; `n2n-gym teacher train {ns.id}`"
              + (f" or put {pin.file} in $N2N_TEACHERS" if pin else ""), file=sys.stderr)
        return 1
    t = load_checkpoint(teacher, arch, paths[0], data, device, verify_sidecar=False, measure=True)
    print(f"{paths[0]}: weights sha256 {t.sha256}; measured on {data.identity}: val {t.val_accuracy:.6f}, "
          f"test {t.test_accuracy:.6f}")
    if pin is None:
        print("not pinned: nothing to compare with")
        return 0
    problems = []
    if t.sha256 != pin.sha256:
        problems.append(f"weights sha256 differs from the pinned {pin.sha256}")
    if data.digest != pin.data_digest:
        problems.append(f"the data differ from the pinned {pin.data_variant} (digest {pin.data_digest[:16]}…)")
    for name, got, want in (("val", t.val_accuracy, pin.val_accuracy), ("test", t.test_accuracy, pin.test_accuracy)):
        if abs(got - want) > 1e-6:
            problems.append(f"{name} accuracy {got:.6f} != pinned {want:.6f}")
    print("OK: the pinned teacher" if not problems else "MISMATCH: " + "; ".join(problems))
    return 1 if problems else 0


# ---------------------------------------------------------------------------- parser
def _alternatives(text: str) -> str:
    from n2n_gym.evaluation.final import ALTERNATIVES

    names = [t for t in text.split(",") if t]
    unknown = sorted(set(names) - set(ALTERNATIVES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(ALTERNATIVES)} (comma-separated)")
    return ",".join(names)


def build_parser() -> argparse.ArgumentParser:
    from n2n_gym.envs.registration import DEFAULT_ENV_ID

    parser = argparse.ArgumentParser(prog="n2n-gym", description="Network-to-network compression (N2N, ICLR 2018) "
                                     "as a Gymnasium MDP.")
    sub = parser.add_subparsers(dest="command", required=True)

    ep = sub.add_parser("episode", help="random mask-respecting episodes: rewards and student tables",
                        description="Play random episodes (uniform over the allowed actions) and print each "
                                    "student's reward and layer table.")
    ep.add_argument("--env", dest="env", default=DEFAULT_ENV_ID, help="env id (default: %(default)s)")
    ep.add_argument("--stage", default="joint", choices=("remove", "shrink", "joint"),
                    help="the env's stage (default: %(default)s)")
    ep.add_argument("--episodes", type=int_at_least(1), default=3, help="number of episodes (default: %(default)s)")
    ep.add_argument("--protocol", default=None,
                    help="evaluation protocol: fast | paper | tiny | ... (default: the env id's own)")
    ep.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random actions (default: %(default)s)")
    ep.add_argument("--device", default="auto", help="device of student training (default: %(default)s)")
    ep.add_argument("--env-kwargs", type=json_object, default={}, metavar="JSON",
                    help="extra gym.make keyword arguments as JSON")
    ep.set_defaults(func=cmd_episode)

    co = sub.add_parser(
        "compress", help="the N2N search, final distillation, exports and report (the main job)",
        description="Compress the teacher of an env with the two-stage N2N agent (removal, then shrinkage), "
                    "distil the best student longer, export it and write a report and plots to a run folder.")
    co.add_argument("--env", dest="env_id", default=DEFAULT_ENV_ID, help="env id (default: %(default)s)")
    co.add_argument("--out", default=None, help=f"run folder (default: {RUNS_ROOT}/<env>-seed<seed>-<time>)")
    co.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                    help="continue a run (RUN_DIR, else --out, else the newest folder under runs/)")
    co.add_argument("--final-epochs", type=int, default=DEFAULT_FINAL_EPOCHS,
                    help="epochs of the final distillation of the best student (default: %(default)s)")
    co.add_argument("--final-lr", type=float, default=1e-3,
                    help="Adam lr of the final distillation (last third at lr/10) (default: %(default)s)")
    co.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                    help="write the torch.export and ONNX files (default: on)")
    co.add_argument("--compare", default="magnitude,thin", type=_alternatives, metavar="NAMES",
                    help="students trained by the same final distillation at the best student's size, for the "
                         "report: magnitude (uniform L1 pruning), thin (the same thin network from random init); "
                         "'' for none (default: %(default)s)")
    co.add_argument("--latency-rounds", type=int, default=3, metavar="N",
                    help="paired rounds of the teacher/student latency measurement of the exported files "
                         "(ONNX Runtime and torch.export, batch 1 and 256, 1 thread); 0 skips it (default: %(default)s)")
    co.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                    help="compress your own network: a function or class returning the trained nn.Module, "
                         "with literal keyword arguments if any (e.g. 'torchvision.models:resnet18(num_classes=10)'; "
                         "the current folder is importable); runs on "
                         "N2N-Custom-v0, imported with torch.fx (n2n_gym.teachers.importer)")
    co.add_argument("--checkpoint", default=None, metavar="WEIGHTS.pt",
                    help="a state_dict to load into the --model network")
    co.add_argument("--dataset", default=None, metavar="NAME",
                    help="the env's data set: digits | mnist | cifar10 | cifar100 | svhn | npz:/path/file.npz "
                         "(default: the env's; digits with --model)")
    from n2n_gym.agents.n2n import add_args

    add_args(co, skip=("env_id", "out", "save_policy"))
    co.set_defaults(func=cmd_compress)

    te = sub.add_parser("teacher", help="pinned teachers: list, train, verify, pin",
                        description="The teachers of the registered envs (n2n_gym/teachers/pinned/registry.json).")
    tsub = te.add_subparsers(dest="teacher_command", required=True)
    tl = tsub.add_parser("list", help="every registered env id: its teacher, pinned sha, accuracies, size, "
                                      "present here or not, estimated training time on this device")
    tl.add_argument("ids", nargs="*", help="env ids (default: all)")
    tl.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=True,
                    help="time a few training steps per teacher to estimate the training time (default: on)")
    tl.add_argument("--device", default="cpu", help="device of the estimate (default: %(default)s)")
    tl.add_argument("--json", action="store_true", help="print JSON rows")
    tt = tsub.add_parser("train", help="train an env's teacher by its recipe (progress with ETA, resumable)")
    tt.add_argument("id", help="env id or pinned teacher id")
    tt.add_argument("--device", default="auto", help="cpu | cuda | auto (default: %(default)s)")
    tv = tsub.add_parser("verify", help="re-measure an env's teacher on the env's splits and check its sha256")
    tv.add_argument("id", help="env id or pinned teacher id")
    tv.add_argument("--device", default="cpu", help="device of the measurement (default: %(default)s)")
    tp = tsub.add_parser("pin", help="pin a trained checkpoint as an env's teacher (writes the registry)")
    tp.add_argument("id", help="env id")
    tp.add_argument("path", help="teacher checkpoint (n2n-gym format, recording its recipe)")
    tp.add_argument("--store", action=argparse.BooleanOptionalAction, default=True,
                    help="copy it into the package's pinned/ folder (default: on; off: reproduce by training)")
    tp.add_argument("--train-seconds", type=float, default=None, help="wall time of its training")
    tp.add_argument("--conditions", default="", help="conditions of that wall time (machine, threads, load)")
    tp.add_argument("--legacy-sha256", action="append", default=[], metavar="SHA",
                    help="a file sha256 that older records carry for these same weights (repeatable)")
    tp.add_argument("--legacy-note", default="", help="the evidence that the legacy sha256 are these weights")
    te.set_defaults(func=cmd_teacher)

    for name, (_, help_text) in FORWARDED.items():  # listed here; main() hands their arguments over whole
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# subcommands implemented in benchmarks/, each with its own argument parser (`n2n-gym bench --help`)
FORWARDED = {
    "bench": ("n2n_gym.bench.runner", "run agents x seeds at a budget of student evaluations; append JSONL records"),
    "leaderboard": ("n2n_gym.bench.leaderboard", "rank agents from results files (md/csv/html) with plots"),
    "validate": ("n2n_gym.bench.validate", "replay every record of a results file and re-check its reward"),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a wrong input raises where it is given (a typo'd env id or kwarg, a value out of
    range, a teacher or data set that cannot be had): one line for the user, not a traceback."""
    import gymnasium as gym

    from n2n_gym.data.datasets import DataUnavailableError
    from n2n_gym.teachers.teacher import (
        TeacherCheckpointError,
        TeacherInvalidError,
        TeacherTrainingTooLong,
    )

    from n2n_gym.utils.files import CacheFolderError

    return (gym.error.Error, ValueError, TypeError, KeyError, DataUnavailableError, TeacherCheckpointError,
            TeacherInvalidError, TeacherTrainingTooLong, CacheFolderError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else ""
    try:
        return _main(argv)
    except _user_errors() as exc:
        if os.environ.get("N2N_DEBUG"):  # the traceback, for bug reports
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"n2n-gym {command}: error: {message} (N2N_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] in FORWARDED:
        import importlib

        return int(importlib.import_module(FORWARDED[argv[0]][0]).main(argv[1:]) or 0)
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "compress":  # the search settings, checked before a run folder is made
        from n2n_gym.agents.n2n import Args, args_or_exit

        fields = {f.name for f in dataclasses.fields(Args)}
        args_or_exit(parser, Args, {k: v for k, v in vars(ns).items() if k in fields})
        for name in ("final_epochs", "latency_rounds"):
            if getattr(ns, name) < 0:
                parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(ns, name)}")
        if not (math.isfinite(ns.final_lr) and ns.final_lr > 0):
            parser.error(f"--final-lr must be a finite number > 0, got {ns.final_lr}")
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
