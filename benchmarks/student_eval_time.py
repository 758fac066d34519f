"""Time of one fast-protocol student evaluation on an env whose teacher is not trained yet.

Evaluation cost depends on the student's shape and the protocol, not on the teacher's
weights, so this times random students against an *untrained* teacher checkpoint of the
env's architecture (their accuracies mean nothing and are not reported).

    python -m n2n_gym.benchmarks.student_eval_time --env N2N-VGG13-MNIST-v0 --students 5
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from n2n_gym.data.datasets import load_dataset
from n2n_gym.evaluation.cache import NullCache
from n2n_gym.evaluation.evaluator import Evaluator
from n2n_gym.ir.build import build
from n2n_gym.ir.edits import InvalidStudent
from n2n_gym.teachers.teacher import Teacher, weights_sha256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="N2N-VGG13-MNIST-v0")
    p.add_argument("--protocol", default="fast")
    p.add_argument("--students", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/student_eval_time.json")
    args = p.parse_args()

    # an untrained teacher is refused by the env (chance level): time the library's
    # Evaluator directly, with the env's students and an untrained Teacher
    env = gym.make(args.env, protocol=args.protocol, cache=False).unwrapped
    data = load_dataset(env.dataset_name)
    module = build(env.teacher_architecture).eval()
    teacher = Teacher(env.teacher_name, env.teacher_architecture, module, 0.1, 0.1,
                      weights_sha256(module.state_dict()), data.variant, "untrained (timing only)",
                      data_digest=data.digest)
    evaluator = Evaluator(teacher, data, "cpu", NullCache())
    masks = env.layer_masks()
    rng = np.random.default_rng(0)
    rows = []
    for _ in tqdm(range(args.students), desc=f"{args.protocol} students"):
        actions = [int(rng.choice(np.flatnonzero(m))) for m in masks]
        try:
            arch = env.student_architecture(actions)
        except InvalidStudent:
            continue
        result = evaluator.evaluate(arch, args.protocol, 0)
        if result.valid:
            rows.append({"params": result.params, "flops": result.flops, "seconds": result.seconds})
    final = {"data_variant": data.variant, "teacher_params": teacher.params}
    first = rows[0]["seconds"]  # includes the one-off teacher logits of the training subset
    result = {"env": args.env, "protocol": args.protocol, "data_variant": final["data_variant"],
              "teacher": "untrained (timing only)", "students": rows,
              "first_student_s": first, "median_s_after_first": statistics.median(r["seconds"] for r in rows[1:]),
              "teacher_params": final["teacher_params"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
