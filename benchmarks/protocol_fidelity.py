"""Does the cheap ``fast`` protocol rank students the way the ``paper`` protocol does?

Samples random (mask-respecting) students, scores each under both protocols through the
Gymnasium API, and reports the Spearman rank correlation of the rewards and of the
validation accuracies, with a scatter plot. On a small data set the paper protocol's 5
epochs are few optimizer steps, so ``--reference-epochs N`` adds a converged reference
(the paper protocol trained for N epochs) and reports every pair's correlation.

    python -m n2n_gym.benchmarks.protocol_fidelity --env N2N-DigitsNet-Digits-v0 --students 40
"""

from __future__ import annotations

import argparse
import dataclasses
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
from n2n_gym.protocols import PROTOCOLS


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
    p.add_argument("--reference-epochs", type=int, default=0, help="add a converged reference protocol (0: none)")
    p.add_argument("--out", default="benchmarks/results/protocol_fidelity")
    args = p.parse_args()

    fast = gym.make(args.env, protocol="fast").unwrapped
    paper = gym.make(args.env, protocol="paper").unwrapped
    reference = None
    if args.reference_epochs:
        converged = dataclasses.replace(PROTOCOLS["paper"], name=f"paper-{args.reference_epochs}ep",
                                        epochs=args.reference_epochs)
        reference = gym.make(args.env, protocol=converged).unwrapped
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
        extra = {}
        if reference is not None:
            r_ref, i_ref = play(reference, actions)
            extra = {"reference_reward": r_ref, "reference_accuracy": i_ref["accuracy"]}
        rows.append({**extra, "actions": actions, "params": i_fast["params"], "fast_reward": r_fast, "paper_reward": r_paper,
                     "fast_accuracy": i_fast["accuracy"], "paper_accuracy": i_paper["accuracy"],
                     "fast_seconds": i_fast["eval_seconds"], "paper_seconds": i_paper["eval_seconds"]})
    def rho(a, b):
        return float(spearmanr([r[a] for r in rows], [r[b] for r in rows]).statistic)

    rho_r = spearmanr([r["fast_reward"] for r in rows], [r["paper_reward"] for r in rows]).statistic
    rho_a = spearmanr([r["fast_accuracy"] for r in rows], [r["paper_accuracy"] for r in rows]).statistic
    summary = {"env": args.env, "data_variant": i_fast["data_variant"], "students": len(rows),
               "spearman_reward": float(rho_r), "spearman_accuracy": float(rho_a),
               "fast_median_s": float(np.median([r["fast_seconds"] for r in rows])),
               "paper_median_s": float(np.median([r["paper_seconds"] for r in rows])),
               "teacher_val_accuracy": i_fast["teacher_accuracy"],
               "mean_accuracy": {k: float(np.mean([r[f"{k}_accuracy"] for r in rows]))
                                 for k in ("fast", "paper", "reference") if f"{k}_accuracy" in rows[0]}}
    if reference is not None:
        summary["reference_epochs"] = args.reference_epochs
        summary["spearman_reward_fast_vs_reference"] = rho("fast_reward", "reference_reward")
        summary["spearman_reward_paper_vs_reference"] = rho("paper_reward", "reference_reward")
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
