"""Evaluation throughput, paired and repeated in one run (issue 13).

(a) **Distillation images/s**: the project's loop (``n2n_gym.evaluation.distill.distill``: whole uint8
    tensors, batched crop/flip, reused teacher logits without augmentation) against a loop
    written like the original N2N code, here in this file: PIL images, per-sample
    torchvision transforms, a ``DataLoader``, a teacher forward on every batch. Same
    student, images, epochs and batch size; with and without augmentation.
(b) **Students/hour** of random distinct students through ``env.unwrapped.evaluate_many``
    on the inline backend (1 worker), the process pool (2 workers) and Ray (2 workers),
    each worker on ``--threads`` torch threads; measured after the workers started
    (their start-up is reported apart).
(c) **Duplicate evaluations** with 4 workers: every worker is handed every student
    (rotated order, maximal contention) and the shared cache's claims must keep the
    trainings to one per distinct student.
(d) **Levers** checked for equal rewards before use: batch-norm folding for scoring and
    fused Adam (accuracies / weights compared student by student, and timed).

Repeats alternate the order of the configurations. The machine's load (``os.getloadavg``)
is recorded with the figures: on a shared machine they are lower bounds.

    python -m n2n_gym.benchmarks.throughput --env N2N-DigitsNet-Digits-v0 --repeats 3
    # ResNet-20 / CIFAR-10 timing with an *untrained* teacher (accuracies meaningless):
    python -m n2n_gym.benchmarks.throughput --env N2N-ResNet20-CIFAR10-v0 --untrained-teacher --students 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import n2n_gym
from n2n_gym.data.datasets import load_dataset
from n2n_gym.evaluation.backends import make_backend
from n2n_gym.evaluation.distill import accuracy, distill, predict_logits
from n2n_gym.ir.build import build, inherit_weights
from n2n_gym.teachers.teacher import save_teacher
from n2n_gym.utils.checks import int_at_least


# ---------------------------------------------------------------------------- helpers
def random_students(env, n: int, seed: int) -> list[list[int]]:
    """``n`` distinct valid students' action lists (mask-respecting, uniform)."""
    rng = np.random.default_rng(seed)
    _, info = env.reset()
    out, seen = [], set()
    for _ in range(50 * n):
        acts = [int(rng.choice(np.flatnonzero(m))) for m in info["layer_masks"]]
        try:
            arch = env.student_architecture(acts)
        except Exception:  # noqa: BLE001 - an invalid student is simply not drawn
            continue
        h = arch.canonical_hash()
        if h in seen or arch.params >= env.teacher.params:
            continue
        seen.add(h)
        out.append(acts)
        if len(out) == n:
            break
    return out


def make_env(args, cache, **kwargs):
    kw = dict(protocol=args.protocol, device="cpu", cache=cache, progress=False, **args.env_kwargs, **kwargs)
    if args.teacher_checkpoint:
        kw["teacher_checkpoint"] = args.teacher_checkpoint
    return gym.make(args.env, **kw).unwrapped


def load_state() -> dict:
    return {"loadavg_1_5_15": list(os.getloadavg()), "cpus": os.cpu_count()}


# ---------------------------------------------------------------------------- (a) loops
def reference_loop(student, teacher, data, x_uint8, *, epochs, batch_size, lr, augment, seed) -> None:
    """Distillation the way the N2N code does it: a torchvision dataset of PIL images,
    per-sample transforms, a DataLoader, the teacher's logits recomputed every batch."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    info = data.info
    # uint8 (H, W) gives an "L" image and (H, W, 3) an "RGB" one: Pillow infers the mode
    images = [Image.fromarray(im.squeeze(0).numpy() if im.shape[0] == 1 else im.permute(1, 2, 0).numpy())
              for im in x_uint8]
    tf = [T.RandomCrop(x_uint8.shape[-1], padding=info.crop_padding)] if augment else []
    if augment and info.flip:
        tf.append(T.RandomHorizontalFlip())
    tf += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    transform = T.Compose(tf)

    class Images(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i])

    torch.manual_seed(seed)
    loader = DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=len(images) > batch_size)
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=5e-4)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for xb in loader:
            with torch.no_grad():
                target = teacher(xb)
            loss = F.mse_loss(student(xb), target)
            opt.zero_grad()
            loss.backward()
            opt.step()


def bench_distill(args, env) -> dict:
    ev = env.evaluator
    data, teacher = ev.data, ev.teacher.module
    x, _ = data.subset("train", args.images, seed=0)
    acts = random_students(env, 1, args.seed + 7)[0]
    arch = env.student_architecture(acts)
    images = len(x) * args.epochs
    rows = {k: [] for k in ("project_aug", "reference_aug", "project_noaug", "reference_noaug", "project_shared")}
    # the fast protocol's real per-student path: the env computes the subset's teacher logits once
    # and every student reuses them, so their one-off cost is outside the per-student time
    shared_logits = predict_logits(teacher, data, x)
    # repeat -1 is an untimed warm-up: the first call of a loop pays one-off imports (measured ~18 s
    # on a loaded machine for the first augmented distillation) and allocator growth
    for rep in tqdm(range(-1, args.repeats), desc="(a) distillation loops"):
        order = list(rows) if rep % 2 == 0 else list(reversed(rows))
        for name in order:
            aug = name.endswith("_aug")
            torch.manual_seed(0)
            student = build(arch)
            inherit_weights(student, teacher)
            start = time.perf_counter()
            if name == "project_shared":
                distill(student, teacher, data, x, epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                        weight_decay=5e-4, augment=False, generator=torch.Generator().manual_seed(0),
                        teacher_logits=shared_logits)
            elif name.startswith("project"):
                logits = None if aug else predict_logits(teacher, data, x)  # counted: one student's own pass
                distill(student, teacher, data, x, epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                        weight_decay=5e-4, augment=aug, generator=torch.Generator().manual_seed(0),
                        teacher_logits=logits)
            else:
                reference_loop(student, teacher, data, x, epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                               augment=aug, seed=0)
            if rep >= 0:
                rows[name].append(images / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"student_params": arch.params, "images": len(x), "epochs": args.epochs, "batch_size": args.batch_size,
            "images_per_s": rows, "median_images_per_s": med,
            "speedup_aug": med["project_aug"] / med["reference_aug"],
            "speedup_noaug": med["project_noaug"] / med["reference_noaug"],
            "speedup_shared_logits": med["project_shared"] / med["reference_noaug"]}


# ---------------------------------------------------------------------------- (b) students/hour
def bench_backends(args, probe) -> dict:
    configs = [("inline", 1), ("process", 2), ("ray", 2)]
    rows: dict[str, list[float]] = {f"{b}x{w}": [] for b, w in configs}
    startup: dict[str, list[float]] = {f"{b}x{w}": [] for b, w in configs}
    ray_started = False
    try:
        import ray

        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        ray_started = True
    except ImportError:
        configs = configs[:2]
        rows.pop("rayx2"), startup.pop("rayx2")
    # fresh students every (repeat, config): nothing is a cache hit, every config sees its own draw
    for rep in tqdm(range(args.repeats), desc="(b) students/hour"):
        order = configs if rep % 2 == 0 else list(reversed(configs))
        for i, (backend, workers) in enumerate(order):
            with tempfile.TemporaryDirectory() as tmp:
                opts = {} if backend == "inline" else {"threads": args.threads}
                env = make_env(args, str(pathlib.Path(tmp) / "r.sqlite"), backend=backend, workers=workers,
                               backend_options=opts)
                students = random_students(env, args.students + 2 * workers, seed=1000 * rep + 17 * i + args.seed)
                t0 = time.perf_counter()
                # warm: start the workers and let each load teacher + data + logits on one student
                env.evaluate_many(students[:2 * workers])
                startup[f"{backend}x{workers}"].append(time.perf_counter() - t0)
                batch = students[2 * workers:]
                t0 = time.perf_counter()
                out = env.evaluate_many(batch)
                dt = time.perf_counter() - t0
                assert not any(info["cached"] for _, info in out)
                rows[f"{backend}x{workers}"].append(3600 * len(batch) / dt)
                env.close()
    if ray_started:
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"students_per_batch": args.students, "threads_per_worker": args.threads, "students_per_hour": rows,
            "median_students_per_hour": med, "startup_s": startup,
            "speedup_vs_1_worker": {k: v / med["inlinex1"] for k, v in med.items()}}


# ---------------------------------------------------------------------------- (c) duplicates
def bench_duplicates(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = make_env(args, str(pathlib.Path(tmp) / "r.sqlite"))
        acts = random_students(env, args.dup_students, seed=args.seed + 99)
        archs = [env.student_architecture(a) for a in acts]
        backend = make_backend("process", env.evaluator, workers=4, threads=1)
        try:
            n = len(archs)
            futures = [backend.submit(archs[(i + w) % n], env.protocol, env.eval_seed) for w in range(4) for i in range(n)]
            results = [f.result() for f in futures]
        finally:
            backend.close()
            env.close()
    trained = sum(not r.cached for r in results)
    return {"workers": 4, "requests": len(results), "distinct_students": len(archs), "trainings": trained,
            "duplicate_trainings": trained - len(archs)}


# ---------------------------------------------------------------------------- (d) levers
def fold_batchnorm(model):
    """Eval copy with each Conv2d+BatchNorm2d pair folded into one conv (torch's fuse_conv_bn_eval)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    return model


def bench_levers(args, env) -> dict:
    ev, p = env.evaluator, env.protocol
    x, _ = ev.data.subset("train", p.train_images, seed=0)
    logits = predict_logits(ev.teacher.module, ev.data, x)
    val, test = ev.data.subset("val", p.val_images, seed=0), ev.data.subset("test", p.test_images, seed=0)
    same_acc = same_weights = 0
    t = {"score_plain": 0.0, "score_folded": 0.0, "train_adam": 0.0, "train_fused_adam": 0.0}
    students = random_students(env, args.lever_students, seed=args.seed + 5)
    for acts in tqdm(students, desc="(d) levers"):
        arch = env.student_architecture(acts)
        trained = []
        for fused in (False, True):
            torch.manual_seed(0)
            s = build(arch)
            inherit_weights(s, ev.teacher.module)
            opt_cls = torch.optim.Adam
            if fused:
                torch.optim.Adam = lambda *a, **kw: opt_cls(*a, fused=True, **kw)  # the lever under test
            start = time.perf_counter()
            try:
                distill(s, ev.teacher.module, ev.data, x, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                        weight_decay=p.weight_decay, augment=False, generator=torch.Generator().manual_seed(0),
                        teacher_logits=logits)
            finally:
                torch.optim.Adam = opt_cls
            t["train_fused_adam" if fused else "train_adam"] += time.perf_counter() - start
            trained.append(s)
        same_weights += all(torch.equal(a, b) for a, b in zip(trained[0].state_dict().values(),
                                                              trained[1].state_dict().values()))
        start = time.perf_counter()
        plain = (accuracy(trained[0], ev.data, *val), accuracy(trained[0], ev.data, *test))
        t["score_plain"] += time.perf_counter() - start
        start = time.perf_counter()
        folded_model = fold_batchnorm(trained[0])
        folded = (accuracy(folded_model, ev.data, *val), accuracy(folded_model, ev.data, *test))
        t["score_folded"] += time.perf_counter() - start
        same_acc += plain == folded
    return {"students": len(students), "bn_folding_same_accuracies": same_acc,
            "fused_adam_same_weights": same_weights, "seconds": t,
            "bn_folding_speedup": t["score_plain"] / t["score_folded"],
            "fused_adam_speedup": t["train_adam"] / t["train_fused_adam"]}


# ---------------------------------------------------------------------------- main
def _parts(text: str) -> str:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set("abcd"))
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"parts are a, b, c, d (comma-separated); got {text!r}")
    return ",".join(parts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--protocol", default="fast")
    p.add_argument("--teacher-checkpoint", default=None)
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="extra gym.make kwargs (JSON)")
    p.add_argument("--untrained-teacher", action="store_true",
                   help="time against an untrained teacher checkpoint (timing only; accuracies meaningless)")
    p.add_argument("--repeats", type=int_at_least(1), default=3)
    p.add_argument("--students", type=int_at_least(1), default=10, help="students per (b) measurement (after warm-up)")
    p.add_argument("--dup-students", type=int_at_least(1), default=6)
    p.add_argument("--lever-students", type=int_at_least(1), default=10)
    p.add_argument("--images", type=int_at_least(1), default=1000, help="(a) training images")
    p.add_argument("--epochs", type=int_at_least(1), default=2, help="(a) epochs")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="(a) batch size")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads per worker (and of this process)")
    p.add_argument("--parts", default="a,b,c,d", type=_parts,
                   help="comma-separated: a (distillation loops), b (students/hour), c (duplicates), d (levers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/throughput")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if args.untrained_teacher:
        probe = gym.make(args.env).unwrapped
        ckpt = pathlib.Path(tempfile.mkdtemp()) / "untrained.pt"
        save_teacher(ckpt, build(probe.teacher_architecture).eval(), load_dataset(probe.dataset_name),
                     val_accuracy=0.1, test_accuracy=0.1)
        args.teacher_checkpoint = str(ckpt)
    env = make_env(args, False)
    result = {"env": args.env, "protocol": args.protocol, "torch": torch.__version__,
              "teacher": "untrained checkpoint (timing only)" if args.untrained_teacher else "trained",
              "teacher_params": env.teacher.params, "data_variant": env.evaluator.data.variant,
              "load_before": load_state(), "args": vars(args)}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    benches = {"a": ("distill", lambda: bench_distill(args, env)), "d": ("levers", lambda: bench_levers(args, env)),
               "c": ("duplicates", lambda: bench_duplicates(args)), "b": ("backends", lambda: bench_backends(args, env))}
    for part, (name, run) in benches.items():
        if part in parts:
            result[name] = run()
            result["load_after"] = load_state()
            out.with_name(out.name + ".json").write_text(json.dumps(result, indent=1))  # each part as soon as it is done
    env.close()
    _plot(result, out.with_name(out.name + ".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1))
    return result


def _plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("distill", "backends") if k in result]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, key in zip(axes[0], panels):
        med = result[key]["median_images_per_s" if key == "distill" else "median_students_per_hour"]
        ax.bar(list(med), list(med.values()))
        ax.set_ylabel("images/s" if key == "distill" else "students/hour")
        ax.tick_params(axis="x", rotation=30)
    la = result["load_before"]["loadavg_1_5_15"][0]
    fig.suptitle(f"{result['env']} ({result['protocol']}), load average {la:.1f} on {result['load_before']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
