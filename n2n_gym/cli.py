"""The ``n2n-gym`` command line.

- ``n2n-gym episode``: a few random (mask-respecting) episodes on an env, printing each
  student's reward and its layer table.
- ``n2n-gym compress``: search the teacher's students (``--agent n2n``, the N2N search of
  ``agents/n2n.py``: removal, then shrinkage; or ``--agent random | optuna_tpe | evolution |
  ...`` of ``n2n-gym bench`` under ``--budget`` student evaluations), distil the best student
  longer, export it, write a report and plots, all in a run folder; ``--resume`` continues a
  killed run without losing an evaluated student. ``--model package.module:factory
  [--checkpoint weights.pt] --dataset npz:/path.npz`` compresses your own network instead of
  a zoo teacher (``N2N-Custom-v0``). The job itself is :func:`n2n_gym.compress.compress`
  (its docstring lists the run folder's files); this command parses and prints.
- ``n2n-gym teacher list | train ID | verify ID | pin ID PATH``: the pinned teachers
  (``n2n_gym.teachers.registry``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import signal
import sys
import threading

from n2n_gym.agents.n2n import Args, add_args, args_or_exit
from n2n_gym.bench.runner import AGENTS
from n2n_gym.compress import (
    DEFAULT_AGENT,
    DEFAULT_FINAL_EPOCHS,
    FINAL_EPOCHS_BY_ENV,
    RUNS_ROOT,
    CompressError,
    compress,
)
from n2n_gym.compress import format_accuracy as _fmt_acc
from n2n_gym.compress import format_count as _fmt_int
from n2n_gym.evaluation.final import RECIPES as FINAL_RECIPES
from n2n_gym.teachers.training import PRECISIONS
from n2n_gym.utils.checks import int_at_least, json_object, positive_float
from n2n_gym.utils.devices import resolve_device


# ---------------------------------------------------------------------------- episode
def cmd_episode(ns: argparse.Namespace) -> int:
    import gymnasium as gym
    import numpy as np

    import n2n_gym

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
        # a calibrated protocol's accuracies estimate the trained student's: say so, and show the measurement
        estimated = info["valid"] and abs(info["measured_accuracy"] - info["accuracy"]) > 1e-9
        print(f"episode {ep}: reward {reward:.4f}  valid={info['valid']}  {'estimated ' if estimated else ''}"
              f"val acc {_fmt_acc(info['accuracy'])} (teacher {_fmt_acc(info['teacher_accuracy'])})  "
              f"{'estimated ' if estimated else ''}test acc {_fmt_acc(info['test_accuracy'])}  "
              + (f"measured val acc {_fmt_acc(info['measured_accuracy'])}  " if estimated else "") +
              f"params {_fmt_int(info['params'])} / {_fmt_int(info['teacher_params'])} "
              f"({info['compression']:.2f}x)  eval {info['eval_seconds']:.2f}s{' (cached)' if info['cached'] else ''}")
        if info["reason"]:
            print(f"  invalid: {info['reason']}")
        print(env.render())
        print()
    env.close()
    return 0


# ---------------------------------------------------------------------------- compress
def cmd_compress(ns: argparse.Namespace) -> int:
    """``n2n-gym compress``: :func:`n2n_gym.compress.compress` with the parsed options; prints the report."""
    settings = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Args)
                if hasattr(ns, f.name) and f.name not in ("env_id", "out", "progress")}
    if ns.resume is not None:
        out, resume = (ns.resume or ns.out), True
    else:
        out, resume = ns.out, False
    # a kill's SIGTERM (a scheduler, `kill`) stops the run as Ctrl-C does: the workers stopped,
    # what is done kept, the way to go on said (a handler of the caller's own is left alone)
    terminated: list[int] = []

    def on_term(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if ours:
        signal.signal(signal.SIGTERM, on_term)
    try:
        report = compress(ns.env_id, out=out, resume=resume, agent=ns.agent, budget=ns.budget, hparams=ns.hparams,
                          model=ns.model, checkpoint=ns.checkpoint, dataset=ns.dataset, final_epochs=ns.final_epochs,
                          final_lr=ns.final_lr, final_recipe=ns.final_recipe, final_precision=ns.final_precision,
                          export=ns.export, compare=ns.compare,
                          latency_rounds=ns.latency_rounds, final_workers=ns.final_workers, sizes=ns.sizes,
                          progress=ns.progress,
                          **settings)
    except CompressError as exc:
        raise SystemExit(f"n2n-gym compress{' ' + exc.flag if exc.flag else ''}: {exc}") from None
    except KeyboardInterrupt:  # what is done is on disk (history, cache, checkpoints): say how to go on
        where = f" {shlex.quote(str(out))}" if out else ""
        print(f"\n{'terminated' if terminated else 'interrupted'}; `n2n-gym compress --resume{where}` continues the "
              "run where it stopped", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "final" not in report:  # no valid student (said on stderr)
        return 1
    run_dir = pathlib.Path(report["run_dir"])
    print((run_dir / "report.txt").read_text())
    for fmt, value in report["exports"].items():  # files relative to the run folder; messages as they are
        print(f"{fmt}: {run_dir / value if (run_dir / value).is_file() else value}")
    print(f"run folder: {run_dir}   (n2n_gym.load_student({str(run_dir)!r}) loads the student)")
    return 0


# ---------------------------------------------------------------------------- teacher
#: training-set and evaluation (val + test) sizes of the named data sets (val 10 % of train),
#: so that `teacher list` estimates training time without loading the data
SPLIT_SIZES = {"mnist": (54000, 16000), "cifar10": (45000, 15000), "cifar100": (45000, 15000),
               "svhn": (65932, 33357)}


def _teacher_rows(ids: list[str], estimate: bool, device: str) -> list[dict]:
    import glob

    import torch

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
        default_recipe,
        load_checkpoint,
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


def _agent(name: str) -> str:
    if name not in AGENTS:
        raise argparse.ArgumentTypeError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    return name


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
        "compress", help="the search, final distillation, exports and report (the main job)",
        description="Compress the teacher of an env with the two-stage N2N agent (removal, then shrinkage) or "
                    "another agent (--agent), distil the best student longer, export it and write a report and "
                    "plots to a run folder (n2n_gym.compress.compress).")
    co.add_argument("--env", dest="env_id", default=DEFAULT_ENV_ID, help="env id (default: %(default)s)")
    co.add_argument("--agent", default=DEFAULT_AGENT, type=_agent, metavar="NAME",
                    help="the search: n2n (the N2N options below) or an agent of `n2n-gym bench` "
                         f"({', '.join(a for a in AGENTS if a != DEFAULT_AGENT)}) with --hparams, under --budget "
                         "(default: %(default)s)")
    co.add_argument("--budget", type=int_at_least(1), default=None, metavar="N",
                    help="student evaluations of the search (a repeated or invalid student is free); with n2n it "
                         "sets --updates (a third to removal) (default: --updates x --rollouts, 300)")
    co.add_argument("--hparams", type=json_object, default={}, metavar="JSON",
                    help="hyperparameters of an --agent other than n2n, as in `n2n-gym bench` (default: its own)")
    co.add_argument("--out", default=None, help=f"run folder (default: {RUNS_ROOT}/<env>-seed<seed>-<time>)")
    co.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                    help="continue a run (RUN_DIR, else --out, else the newest folder under runs/)")
    # the final distillation's options default to None: a new run takes the defaults named here,
    # a resumed one keeps its config.json's value of each option not given
    co.add_argument("--final-epochs", type=int_at_least(1), default=None, metavar="N",
                    help=f"epochs of the final distillation of the best student (default: {DEFAULT_FINAL_EPOCHS}; "
                         + ", ".join(f"{v} on {k}" for k, v in FINAL_EPOCHS_BY_ENV.items())
                         + ", sized for a run of about 2 hours on 2 CPU cores)")
    co.add_argument("--final-recipe", default=None, choices=list(FINAL_RECIPES),
                    help="how the final students are trained: n2n (Adam, MSE on logits, last third at lr/10) or "
                         "kd-sgd (SGD with Nesterov momentum on a cosine schedule, KD loss with the labels) "
                         "(default: n2n)")
    co.add_argument("--final-lr", type=positive_float, default=None, metavar="LR",
                    help="lr of the final distillation (default: the recipe's: "
                         + ", ".join(f"{k} {v[0]:g}" for k, v in FINAL_RECIPES.items()) + ")")
    co.add_argument("--final-precision", default=None, choices=list(PRECISIONS),
                    help="the final distillation's forward passes: auto (bf16 on CUDA, fp32 on the CPU) or bf16 "
                         "(bf16 autocast on the CPU too: about twice as fast on a CPU with native bf16, e.g. AMX, "
                         "slower on one without; the estimate compares them) (default: auto)")
    co.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                    help="write the torch.export and ONNX files (default: on)")
    co.add_argument("--compare", default=None, type=_alternatives, metavar="NAMES",
                    help="students trained by the same final distillation at the best student's size, for the "
                         "report: magnitude (uniform L1 pruning), thin (the same thin network from random init); "
                         "'' for none (default: magnitude,thin)")
    co.add_argument("--latency-rounds", type=int_at_least(0), default=None, metavar="N",
                    help="paired rounds of the teacher/student latency measurement of the exported files "
                         "(ONNX Runtime and torch.export, batch 1 and 256, 1 thread); 0 skips it (default: 3)")
    co.add_argument("--sizes", type=int_at_least(1), default=None, metavar="N",
                    help="students of the search's Pareto front given the final distillation, the best one among "
                         "them, spread over its sizes; each exported, with its test accuracy and ONNX Runtime "
                         "latency in the report and sizes.png (default: 1)")
    co.add_argument("--final-workers", type=int_at_least(1), default=None, metavar="N",
                    help="processes that train the final students (the best, the --compare and the --sizes ones) "
                         "side by side, one torch thread each (default: one per student, all at once: on 2 cores "
                         "three take 1.5 distillations' time, two then one take 2; one for a short distillation "
                         "such as digits', where starting a worker costs more)")
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


def _registered(env_id: str) -> bool:
    import gymnasium as gym

    try:
        gym.spec(env_id)
    except gym.error.Error:
        return False
    return True


def _main(argv: list[str]) -> int:
    if argv and argv[0] in FORWARDED:
        import importlib

        return int(importlib.import_module(FORWARDED[argv[0]][0]).main(argv[1:]) or 0)
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "compress":  # the search settings, checked before a run folder is made
        fields = {f.name for f in dataclasses.fields(Args)}
        if _registered(ns.env_id):  # (an unknown id: compress() says it in one line, with the closest ids)
            args_or_exit(parser, Args, {k: v for k, v in vars(ns).items() if k in fields})
        if ns.agent == DEFAULT_AGENT and ns.hparams:
            parser.error("--hparams is for an --agent other than n2n; n2n's settings are its own options "
                         "(--updates, --rollouts, ...)")
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
