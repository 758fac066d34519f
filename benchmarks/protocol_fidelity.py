"""Fidelity ladder: how well each evaluation protocol ranks students against a converged reference.

Samples ``--students`` random distinct (mask-respecting) students, scores each under every
protocol of ``--protocols`` and under a converged *reference*: what ``n2n-gym compress``'s
final distillation does (inherited weights, the whole training split with the data set's
augmentation, batch 64, Adam lr 1e-3, ``--reference-epochs`` epochs; scored on the whole
validation split; one learning rate throughout, where compress drops it 10x for the last
third). Reports, per protocol, the Spearman rho of its rewards (and validation accuracies)
against the reference's, its median seconds per student, and the cheapest protocol whose
rho stays >= ``--min-rho`` (the level a search can afford without losing the ranking).
Students are evaluated in batches on the env's backend (``--backend``, ``--workers``).

    python -m n2n_gym.benchmarks.protocol_fidelity --env N2N-DigitsNet-Digits-v0 --students 30
    python -m n2n_gym.benchmarks.protocol_fidelity --env N2N-ResNet20-CIFAR10-v0 --students 30 \\
        --reference-epochs 30 --backend process --workers 2    # needs the trained ResNet-20 teacher
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

import n2n_gym
from n2n_gym.protocols import PROTOCOLS, Protocol


def reference_protocol(epochs: int) -> Protocol:
    return Protocol(f"reference-{epochs}ep", "inherit", epochs, None, None, None, 64, 1e-3, 0.0, True)


def random_students(env, n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    out, seen = [], set()
    for _ in range(100 * n):
        acts = [int(rng.choice(np.flatnonzero(m))) for m in info["layer_masks"]]
        try:
            arch = env.student_architecture(acts)
        except Exception:  # noqa: BLE001 - an invalid draw is skipped
            continue
        if arch.canonical_hash() in seen or arch.params >= env.teacher.params:
            continue
        seen.add(arch.canonical_hash())
        out.append(acts)
        if len(out) == n:
            break
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--students", type=int, default=30)
    p.add_argument("--protocols", default="tiny,fast,paper", help="comma-separated protocol names")
    p.add_argument("--reference-epochs", type=int, default=30, help="epochs of the converged reference")
    p.add_argument("--min-rho", type=float, default=0.8)
    p.add_argument("--backend", default="inline")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=6, help="students per evaluate_many call")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="extra gym.make kwargs (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/protocol_fidelity")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    names = [s for s in args.protocols.split(",") if s]
    protocols = {n: PROTOCOLS[n] for n in names}
    protocols["reference"] = reference_protocol(args.reference_epochs)
    kwargs = {"progress": False, **args.env_kwargs}
    if args.backend != "inline":
        kwargs.update(backend=args.backend, workers=args.workers, backend_options={"threads": 1})
    envs = {n: gym.make(args.env, protocol=proto, **kwargs).unwrapped for n, proto in protocols.items()}
    students = random_students(envs["reference"], args.students, args.seed)
    scores: dict[str, list[tuple[float, dict]]] = {n: [] for n in protocols}
    bar = tqdm(total=len(students) * len(protocols), desc="students x protocols")
    for n, env in envs.items():
        for start in range(0, len(students), args.batch):
            scores[n] += env.evaluate_many(students[start:start + args.batch])
            bar.update(len(students[start:start + args.batch]))
    bar.close()
    rows = [{"actions": acts, "params": scores["reference"][i][1]["params"],
             **{f"{n}_reward": scores[n][i][0] for n in protocols},
             **{f"{n}_accuracy": scores[n][i][1]["accuracy"] for n in protocols},
             **{f"{n}_seconds": scores[n][i][1]["eval_seconds"] for n in protocols}}
            for i, acts in enumerate(students)]

    def rho(a: str, b: str) -> float:
        return float(spearmanr([r[a] for r in rows], [r[b] for r in rows]).statistic)

    ladder = {n: {"spearman_reward": rho(f"{n}_reward", "reference_reward"),
                  "spearman_accuracy": rho(f"{n}_accuracy", "reference_accuracy"),
                  "median_seconds": float(np.median([r[f"{n}_seconds"] for r in rows])),
                  "protocol": dataclasses.asdict(protocols[n])} for n in names}
    ok = [n for n in names if ladder[n]["spearman_reward"] >= args.min_rho]
    info = scores["reference"][0][1]
    summary = {"env": args.env, "data_variant": info["data_variant"], "teacher_sha256": info["teacher_sha256"],
               "teacher_val_accuracy": info["teacher_accuracy"], "students": len(rows),
               "reference": dataclasses.asdict(protocols["reference"]),
               "reference_median_seconds": float(np.median([r["reference_seconds"] for r in rows])),
               "ladder": ladder, "min_rho": args.min_rho,
               "cheapest_with_min_rho": min(ok, key=lambda n: ladder[n]["median_seconds"]) if ok else None,
               "loadavg": list(os.getloadavg())}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "students": rows}, indent=1))

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, n in zip(axes[0], names):
        ax.scatter([r["reference_reward"] for r in rows], [r[f"{n}_reward"] for r in rows], s=14)
        ax.set_xlabel(f"reward, reference ({args.reference_epochs} epochs)")
        ax.set_ylabel(f"reward, {n}")
        ax.set_title(f"{n}: rho = {ladder[n]['spearman_reward']:.2f}, {ladder[n]['median_seconds']:.2f} s/student")
    fig.suptitle(f"{args.env}: {len(rows)} random students")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    for env in envs.values():
        env.close()
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
