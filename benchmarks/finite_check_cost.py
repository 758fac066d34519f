"""What the evaluation's non-finite checks cost, next to the evaluation they guard.

A student's evaluation (``n2n_gym.evaluation``) checks the distillation loss once per
epoch (summed on the device, one host sync per epoch), the weights once after training
and the logits on the scored images. This times, on the same random students of an env:

- ``eval_s``: the whole evaluation (build, inherit, distil, score; ``cache=False``);
- ``weights_check_s``: :func:`n2n_gym.evaluation.distill.check_finite_weights` on the trained student;
- ``logits_check_s``: ``torch.isfinite(logits).all()`` on its validation + test logits;
- ``loss_sum_s``: the per-step cost of the loss sum, as ``steps`` on-device additions and
  one sync, the work the per-epoch loss check adds to the training loop.

Interleaved per student, repeated ``--repeats`` times; medians are reported.

    python -m n2n_gym.benchmarks.finite_check_cost --students 10 --protocol fast
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.evaluation.distill import check_finite_weights, distill, predict_logits
from n2n_gym.ir.build import build, inherit_weights


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--protocol", default="fast")
    p.add_argument("--students", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/finite_check_cost.json")
    args = p.parse_args(argv)

    env = gym.make(args.env, protocol=args.protocol, cache=False, progress=False, device="cpu").unwrapped
    ev, protocol = env.evaluator, env.protocol
    rng = np.random.default_rng(0)
    students = []
    while len(students) < args.students:
        actions = [int(rng.choice(np.flatnonzero(m))) for m in env._layer_masks]
        try:
            students.append(env.student_architecture(actions))
        except ValueError:
            continue
    x_train, _ = ev._subset("train", protocol.train_images)
    val, test = ev._subset("val", protocol.val_images), ev._subset("test", protocol.test_images)
    steps = protocol.epochs * max(len(x_train) // protocol.batch_size, 1)
    rows = []
    for r in range(args.repeats):
        for i, arch in enumerate(students):
            eval_s = _timed(lambda: ev._train_and_score(arch, protocol, r))
            torch.manual_seed(r)
            module = build(arch)
            inherit_weights(module, ev.teacher.module)
            distill(module, ev.teacher.module, ev.data, x_train, epochs=protocol.epochs, batch_size=protocol.batch_size,
                    lr=protocol.lr, weight_decay=protocol.weight_decay, augment=protocol.augment,
                    generator=torch.Generator().manual_seed(r))
            weights_s = _timed(lambda: check_finite_weights(module))
            logits = [predict_logits(module, ev.data, x) for x, _ in (val, test)]
            logits_s = _timed(lambda: [bool(torch.isfinite(t).all()) for t in logits])
            losses = [torch.rand(()) for _ in range(steps)]

            def loss_sum():
                total = torch.zeros(())
                for loss in losses:
                    total = total + loss
                bool(torch.isfinite(total))

            rows.append({"repeat": r, "student": i, "params": arch.params, "eval_s": eval_s,
                         "weights_check_s": weights_s, "logits_check_s": logits_s, "loss_sum_s": _timed(loss_sum)})
    med = {k: statistics.median(row[k] for row in rows) for k in ("eval_s", "weights_check_s", "logits_check_s",
                                                                   "loss_sum_s")}
    checks = med["weights_check_s"] + med["logits_check_s"] + med["loss_sum_s"]
    result = {"env": args.env, "protocol": args.protocol, "device": "cpu", "torch_threads": torch.get_num_threads(),
              "students": args.students, "repeats": args.repeats, "train_steps_per_student": steps,
              "median": med, "checks_over_eval": checks / med["eval_s"], "rows": rows}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
