"""What reusing the teacher's logits of augmented batches saves (``AugmentedLogits``).

Augmented distillation (the final distillation of ``n2n-gym compress``, the fidelity study's
reference, the ``paper`` protocol) runs the teacher on every batch. Every student of one
seed sees the same batches, so the evaluator keeps those logits and the next student skips
the teacher. This times one augmented epoch of each student on ``--images`` training images,
*cold* (the teacher runs) against *warm* (its logits served), alternating the two per round
so both see the same load, on one torch thread; results are identical by construction (a
test checks the weights), so only time is measured. Raw rows and the summary go to
``--out``; the speed-up is the median over students and rounds of cold / warm.

    python -m n2n_gym.benchmarks.logit_memo --env N2N-ResNet20-CIFAR10-v0 --students 4 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="N2N-ResNet20-CIFAR10-v0")
    p.add_argument("--students", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--out", default=None, help="default: benchmarks/results/logit_memo-<env>.json")
    a = p.parse_args(argv)

    import gymnasium as gym
    import torch

    import n2n_gym  # noqa: F401
    from n2n_gym.evaluation.distill import AugmentedLogits
    from n2n_gym.evaluation.final import final_protocol
    from n2n_gym.evaluation.supernet import sample_student

    torch.set_num_threads(1)
    ev = gym.make(a.env, cache=False, progress=False).unwrapped.evaluator
    protocol = dataclasses.replace(final_protocol(1), name="memo-bench", train_images=a.images)
    rng = np.random.default_rng(0)
    students = [sample_student(ev.teacher.architecture, rng) for _ in range(a.students)]
    rows = []
    total = a.students * a.rounds * 2
    start = time.time()
    print(f"{a.env}: {a.students} students x {a.rounds} rounds x (cold, warm), one epoch of {a.images} augmented "
          f"images each", flush=True)
    for r in range(a.rounds):
        for i, arch in enumerate(students):
            for mode in (("cold", "warm") if (r + i) % 2 == 0 else ("warm", "cold")):
                memo = ev._logit_memos.setdefault((protocol.train_images, protocol.precision), AugmentedLogits())
                if mode == "cold":
                    ev._logit_memos[(protocol.train_images, protocol.precision)] = AugmentedLogits()
                elif memo.hits == 0 and not memo._epochs:
                    ev.train_student(students[0], protocol, 0)  # prime it once (untimed)
                t = time.perf_counter()
                ev.train_student(arch, protocol, 0)
                rows.append({"round": r, "student": i, "params": arch.params, "mode": mode,
                             "seconds": time.perf_counter() - t, "load": os.getloadavg()[0]})
                done = len(rows)
                eta = (time.time() - start) / done * (total - done)
                print(f"[{done}/{total}] student {i} ({arch.params:,} params) {mode}: {rows[-1]['seconds']:.1f} s "
                      f"| ETA {eta / 60:.1f} min", flush=True)
    ratios = [c["seconds"] / w["seconds"] for c in rows if c["mode"] == "cold" for w in rows
              if w["mode"] == "warm" and (w["round"], w["student"]) == (c["round"], c["student"])]
    summary = {"env": a.env, "images": a.images, "threads": 1, "students": a.students, "rounds": a.rounds,
               "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
               "torch": torch.__version__, "rows": rows}
    out = pathlib.Path(a.out or RESULTS / f"logit_memo-{a.env.lower()}.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out)
    print(f"cold / warm: median {summary['speedup_median']:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}) "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
