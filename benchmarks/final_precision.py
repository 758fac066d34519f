"""bf16 autocast on the CPU for the final distillation: its speed, and what it costs in accuracy.

The final distillation of ``n2n-gym compress`` runs the teacher forward and the student
forward and backward on every augmented batch. On a CPU that computes bf16 natively (Intel
AMX / AVX512-BF16) ``precision="bf16"`` (``--final-precision bf16``) runs those passes in
bf16 autocast, the weights and optimizer state staying fp32; on one that does not, bf16 is
slower (issue 13 measured 5x on another machine). This script answers both questions for the
machine it runs on, through the real code path (``Evaluator.train_student`` with
:func:`n2n_gym.evaluation.final.final_protocol`, recipe ``kd-sgd`` as the committed runs):

- **speed**: one epoch of ``--batches`` batches of 64 augmented images under each precision,
  in paired rounds whose order alternates (both see the same load), one torch thread; a new
  seed per round so no teacher logits are reused; the speed-up is the median over rounds of
  fp32 seconds / bf16 seconds.
- **accuracy**: the same student (the committed compress run's, by default) distilled from the
  same seed under each precision, ``--epochs`` epochs over ``--train-images`` training images,
  scored in fp32 on the whole validation split; the difference per seed, bf16 - fp32, in points.
  A short schedule: it shows whether bf16 training breaks or drifts, not the last tenth of a
  point of an 80-epoch run.

Rows are appended to ``--out`` (JSON lines) as each finishes, each with the run's settings, the
machine's CPU flags and torch's version; a rerun with the same settings on the same machine skips
the rows already there (a killed run continues), and one whose settings or machine differ from
the file's rows is refused: each file is one measurement. ``benchmarks/results/final_precision/
resnet20.jsonl`` is the committed one (docs/results/speed.md; in a folder of its own, as the
``*.jsonl`` of ``benchmarks/results/`` are benchmark records); a rerun writes elsewhere.

    python -m n2n_gym.benchmarks.final_precision      # ~25 min on one core (ResNet-20), more under load
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time

from n2n_gym.utils.checks import int_at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
STUDENT = RESULTS / "compress-resnet20-v1" / "student.json"


def cpu_flags() -> list[str]:
    """The CPU's bf16-related flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="N2N-ResNet20-CIFAR10-v1")
    p.add_argument("--student", default=str(STUDENT), help="a student.json (default: the committed compress run's)")
    p.add_argument("--rounds", type=int_at_least(0), default=5, help="paired speed rounds")
    p.add_argument("--batches", type=int_at_least(1), default=20, help="batches of 64 per timed epoch")
    p.add_argument("--seeds", type=int_at_least(0), default=3, help="paired accuracy runs")
    p.add_argument("--epochs", type=int_at_least(1), default=3)
    p.add_argument("--train-images", type=int_at_least(64), default=15000)
    p.add_argument("--out", default="runs/final_precision.jsonl",
                   help="rows (JSON lines; default: runs/final_precision.jsonl; the committed record is "
                        "benchmarks/results/final_precision/resnet20.jsonl)")
    a = p.parse_args(argv)
    if a.rounds == 0 and a.seeds == 0:
        p.error("--rounds 0 and --seeds 0 measure nothing: give one of them")

    import gymnasium as gym
    import torch

    import n2n_gym  # noqa: F401
    from n2n_gym.evaluation.final import final_protocol
    from n2n_gym.ir.arch import Architecture
    from n2n_gym.teachers.training import accuracy

    torch.set_num_threads(1)
    out = pathlib.Path(a.out)
    arch = Architecture.from_dict(json.loads(pathlib.Path(a.student).read_text())["architecture"])
    # what a row measured: a file holds one measurement, so a rerun continues only these
    meta = {"env": a.env, "student": arch.to_json(), "student_params": arch.params, "batches": a.batches,
            "epochs": a.epochs, "train_images": a.train_images, "torch": torch.__version__, "threads": 1,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags()}
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    for r in done:
        differ = sorted(k for k in meta if r.get(k) != meta[k])
        if differ:
            p.error(f"{out} holds rows measured with other settings or on another machine ({', '.join(differ)} "
                    "differ): give another --out")
    have = {(r["kind"], r["index"], r["precision"]) for r in done}
    out.parent.mkdir(parents=True, exist_ok=True)
    ev = gym.make(a.env, cache=False, progress=False).unwrapped.evaluator

    def protocol(precision: str, epochs: int, images: int):
        return dataclasses.replace(final_protocol(epochs, recipe="kd-sgd", precision=precision),
                                   name=f"precision-bench-{precision}", train_images=images)

    items = [("speed", r, prec) for r in range(a.rounds)
             for prec in (("auto", "bf16") if r % 2 == 0 else ("bf16", "auto"))]
    items += [("accuracy", s, prec) for s in range(a.seeds) for prec in ("auto", "bf16")]
    todo = [i for i in items if i not in have]
    print(f"{a.env}: {arch.params:,}-param student, {a.rounds} paired speed rounds of {a.batches} batches, "
          f"{a.seeds} paired accuracy runs of {a.epochs} epochs over {a.train_images} images; {len(todo)} of "
          f"{len(items)} rows to do; CPU {meta['cpu_capability']} {' '.join(meta['cpu_flags'])}", flush=True)
    start = time.time()
    for n, (kind, index, prec) in enumerate(todo, 1):
        t = time.perf_counter()
        if kind == "speed":
            ev.train_student(arch, protocol(prec, 1, 64 * a.batches), 1000 + index)
            row = {"images_per_s": 64 * a.batches / (time.perf_counter() - t)}
        else:
            module = ev.train_student(arch, protocol(prec, a.epochs, a.train_images), index)
            row = {"val_accuracy": accuracy(module, ev.data, *ev.data.split("val"))}
        row = {"kind": kind, "index": index, "precision": prec, **row, "seconds": time.perf_counter() - t,
               "load": os.getloadavg()[0], **meta}
        with open(out, "a") as f:  # one line per finished row: a killed run keeps what it did
            f.write(json.dumps(row) + "\n")
        done.append(row)
        # (the accuracy rows take 30x the speed rows: each remaining row at its own kind's mean)
        took: dict = {}
        for r in done:
            took.setdefault((r["kind"], r["precision"]), []).append(r["seconds"])
        mean = (time.time() - start) / n
        eta = sum(statistics.mean(took.get(item[::2], [mean])) for item in todo[n:])
        print(f"[{n}/{len(todo)}] {kind} {index} {prec}: "
              + (f"{row['images_per_s']:.0f} img/s" if kind == "speed" else f"val {row['val_accuracy']:.2%}")
              + f" ({row['seconds']:.0f} s) | ETA {eta / 60:.1f} min", flush=True)

    by = {(r["kind"], r["index"], r["precision"]): r for r in done}
    speed = [by["speed", r, "bf16"]["images_per_s"] / by["speed", r, "auto"]["images_per_s"] for r in range(a.rounds)
             if ("speed", r, "bf16") in by and ("speed", r, "auto") in by]
    gaps = [100 * (by["accuracy", s, "bf16"]["val_accuracy"] - by["accuracy", s, "auto"]["val_accuracy"])
            for s in range(a.seeds) if ("accuracy", s, "bf16") in by and ("accuracy", s, "auto") in by]
    if speed:
        print(f"bf16 / fp32 images per second: median {statistics.median(speed):.2f}x "
              f"(min {min(speed):.2f}, max {max(speed):.2f}; {len(speed)} rounds)")
    if gaps:
        print("validation accuracy, bf16 - fp32: " + ", ".join(f"{g:+.2f}" for g in gaps) + " points (one per seed)")
    print(f"rows: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
