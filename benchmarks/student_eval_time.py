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
import tempfile

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from n2n_gym.build import build
from n2n_gym.data import load_dataset
from n2n_gym.teachers import save_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="N2N-VGG13-MNIST-v0")
    p.add_argument("--protocol", default="fast")
    p.add_argument("--students", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/student_eval_time.json")
    args = p.parse_args()

    probe = gym.make(args.env).unwrapped
    data = load_dataset(probe.dataset_name)
    ckpt = pathlib.Path(tempfile.mkdtemp()) / "untrained.pt"
    save_teacher(ckpt, build(probe.teacher_architecture).eval(), data, val_accuracy=0.1, test_accuracy=0.1)
    env = gym.make(args.env, protocol=args.protocol, teacher_checkpoint=str(ckpt), cache=False).unwrapped
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for _ in tqdm(range(args.students), desc=f"{args.protocol} students"):
        env.reset()
        for m in info["layer_masks"]:
            _, _, done, _, final = env.step(int(rng.choice(np.flatnonzero(m))))
        if final["valid"]:
            rows.append({"params": final["params"], "flops": final["flops"], "seconds": final["eval_seconds"]})
    first = rows[0]["seconds"]  # includes the one-off teacher logits of the training subset
    result = {"env": args.env, "protocol": args.protocol, "data_variant": final["data_variant"],
              "teacher": "untrained checkpoint (timing only)", "students": rows,
              "first_student_s": first, "median_s_after_first": statistics.median(r["seconds"] for r in rows[1:]),
              "teacher_params": final["teacher_params"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
