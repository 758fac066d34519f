"""Does the cheap ``fast`` protocol rank students the way the ``paper`` protocol does?

Samples random (mask-respecting) students, scores each under both protocols through the
Gymnasium API, and reports the Spearman rank correlation of the rewards and of the
validation accuracies, with a scatter plot.

    python -m benchmarks.protocol_fidelity --env N2N-DigitsNet-Digits-v0 --students 40
"""

from __future__ import annotations

import argparse
import json
import pathlib

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

import n2n_gym


def play(env, actions):
    env.reset()
    for a in actions:
        _, r, done, _, info = env.step(a)
    return r, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--students", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/protocol_fidelity")
    args = p.parse_args()

    fast = gym.make(args.env, protocol="fast").unwrapped
    paper = gym.make(args.env, protocol="paper").unwrapped
    rng = np.random.default_rng(args.seed)
    rows = []
    _, info = fast.reset(seed=args.seed)
    masks = info["layer_masks"]
    for _ in tqdm(range(args.students), desc="students (fast + paper)"):
        actions = [int(rng.choice(np.flatnonzero(m))) for m in masks]
        r_fast, i_fast = play(fast, actions)
        if not i_fast["valid"]:
            continue
        r_paper, i_paper = play(paper, actions)
        rows.append({"actions": actions, "params": i_fast["params"], "fast_reward": r_fast, "paper_reward": r_paper,
                     "fast_accuracy": i_fast["accuracy"], "paper_accuracy": i_paper["accuracy"],
                     "fast_seconds": i_fast["eval_seconds"], "paper_seconds": i_paper["eval_seconds"]})
    rho_r = spearmanr([r["fast_reward"] for r in rows], [r["paper_reward"] for r in rows]).statistic
    rho_a = spearmanr([r["fast_accuracy"] for r in rows], [r["paper_accuracy"] for r in rows]).statistic
    summary = {"env": args.env, "data_variant": i_fast["data_variant"], "students": len(rows),
               "spearman_reward": float(rho_r), "spearman_accuracy": float(rho_a),
               "fast_median_s": float(np.median([r["fast_seconds"] for r in rows])),
               "paper_median_s": float(np.median([r["paper_seconds"] for r in rows])),
               "teacher_val_accuracy": i_fast["teacher_accuracy"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "students": rows}, indent=1))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter([r["paper_reward"] for r in rows], [r["fast_reward"] for r in rows], s=14)
    ax.set_xlabel("reward, paper protocol (random init, 5 epochs)")
    ax.set_ylabel("reward, fast protocol (inherited weights)")
    ax.set_title(f"{args.env}\nSpearman rho = {rho_r:.2f} over {len(rows)} students")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
