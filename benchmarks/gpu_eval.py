"""Students/hour and achieved FLOP/s of student evaluation on one device (GPU or CPU).

Evaluates ``--students`` random distinct students (after ``--warmup`` others) through the
env on ``--device`` and reports students/hour and the achieved FLOP/s against the device's
peak. FLOPs counted per student (FlopCounterMode's convention, 2 per MAC; backward = 2x
forward, so a training step is 3x the forward): ``3 * F_student * images * epochs`` for
distillation (+ ``F_teacher`` per training image when the protocol augments) and
``F_student`` per validation and test image for scoring. The peak is ``--peak-tflops``,
else a table of dense bf16 tensor-core peaks by GPU name (vendor data sheets), else (CPU)
the best fp32 matmul rate measured here.

    python -m n2n_gym.benchmarks.gpu_eval --env N2N-ResNet20-CIFAR10-v0 --device cuda --students 50
    python -m n2n_gym.benchmarks.gpu_eval --device cpu --protocol tiny --students 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

import n2n_gym
from n2n_gym.data.datasets import load_dataset
from n2n_gym.evaluation.protocols import get_protocol
from n2n_gym.ir.build import build
from n2n_gym.teachers.teacher import save_teacher
from n2n_gym.utils.devices import resolve_device

#: dense bf16 tensor-core peak, TFLOP/s (NVIDIA data sheets; SXM parts)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "V100": 125.0, "T4": 65.0}


def measured_matmul_peak(device: torch.device, n: int = 1024, reps: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul (fp32 on CPU, bf16 on CUDA) on ``device``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def device_peak(device: torch.device, given_tflops: float | None) -> tuple[float, str]:
    if given_tflops:
        return given_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"data sheet bf16 dense ({name})"
    return measured_matmul_peak(device), "measured matmul (this process)"


def student_flops(arch, teacher_arch, protocol, data) -> int:
    p = get_protocol(protocol)
    n_train = p.train_images or len(data.train_idx)
    n_val, n_test = p.val_images or len(data.val_idx), p.test_images or len(data.y_test)
    flops = 3 * arch.flops * n_train * p.epochs + arch.flops * (n_val + n_test)
    if p.augment:
        flops += teacher_arch.flops * n_train * p.epochs
    return int(flops)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--protocol", default="fast")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--students", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="students evaluated first and not counted")
    p.add_argument("--untrained-teacher", action="store_true", help="untrained teacher checkpoint (timing only)")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="extra gym.make kwargs (JSON)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gpu_eval.json")
    args = p.parse_args(argv)
    device = torch.device(resolve_device(args.device))
    kwargs = {"protocol": args.protocol, "device": str(device), "cache": False, "progress": False, **args.env_kwargs}
    if args.untrained_teacher:
        probe = gym.make(args.env).unwrapped
        ckpt = pathlib.Path(tempfile.mkdtemp()) / "untrained.pt"
        save_teacher(ckpt, build(probe.teacher_architecture).eval(), load_dataset(probe.dataset_name),
                     val_accuracy=0.1, test_accuracy=0.1)
        kwargs["teacher_checkpoint"] = str(ckpt)
    env = gym.make(args.env, **kwargs).unwrapped
    rng = np.random.default_rng(args.seed)
    _, info = env.reset()
    students, seen = [], set()
    for _ in range(100 * (args.students + args.warmup)):
        acts = [int(rng.choice(np.flatnonzero(m))) for m in info["layer_masks"]]
        try:
            arch = env.student_architecture(acts)
        except Exception:  # noqa: BLE001 - invalid draws are skipped
            continue
        if arch.canonical_hash() not in seen and arch.params < env.teacher.params:
            seen.add(arch.canonical_hash())
            students.append(arch)
        if len(students) == args.students + args.warmup:
            break
    ev = env.evaluator
    for arch in students[: args.warmup]:
        ev.evaluate(arch, env.protocol, env.eval_seed)
    flops, start = 0, time.perf_counter()
    for arch in tqdm(students[args.warmup:], desc=f"students on {device}"):
        result = ev.evaluate(arch, env.protocol, env.eval_seed)  # returns floats: the device has synchronised
        assert result.valid and not result.cached
        flops += student_flops(arch, env.teacher.architecture, env.protocol, ev.data)
    seconds = time.perf_counter() - start
    peak, peak_source = device_peak(device, args.peak_tflops)
    n = len(students) - args.warmup
    out = {"env": args.env, "protocol": env.protocol.name, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()),
           "teacher": "untrained checkpoint (timing only)" if args.untrained_teacher else "trained",
           "students": n, "seconds": seconds, "students_per_hour": 3600 * n / seconds,
           "achieved_flops_per_s": flops / seconds, "peak_flops_per_s": peak, "peak_source": peak_source,
           "fraction_of_peak": flops / seconds / peak}
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    env.close()
    return out


if __name__ == "__main__":
    main()
