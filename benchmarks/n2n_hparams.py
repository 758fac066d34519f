"""N2N's shrink policy on the joint stage: learning rate x baseline, at a small budget.

How the ``n2n [joint, loo, lr 0.03]`` variant of the leaderboards was chosen. Each grid
point is one labelled agent of ``n2n-gym bench`` (``--agent n2n --stage joint`` with
``--hparams {"lr_shrink": lr, "baseline": b}``), run for every seed at the same budget of
evaluations; the records go to ``--results`` (resumable: finished (label, seed) pairs are
skipped) and the script prints their leaderboard.

    python -m n2n_gym.benchmarks.n2n_hparams                                  # digits, 60 evaluations, 5 seeds
    python -m n2n_gym.benchmarks.n2n_hparams --lrs 0.01 0.03 --baselines loo --seeds 0 1 2

The variant is chosen on the embedded env only; the MNIST comparison then runs it
without further tuning (README, "N2N vs random search").
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.bench import leaderboard
from n2n_gym.bench.records import read_records
from n2n_gym.bench.runner import done_keys, run_key, run_one

RESULTS = ROOT / "benchmarks" / "results" / "n2n-hparams-digits-60.jsonl"


def label_of(lr: float, baseline: str) -> str:
    return f"n2n [joint, {baseline}, lr {lr:g}]"


def main(argv: list[str] | None = None) -> int:
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(prog="python -m n2n_gym.benchmarks.n2n_hparams", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="N2N-DigitsNet-Digits-v0")
    p.add_argument("--budget", type=int, default=60, help="student evaluations per run (default 60)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1], help="Adam lr of the shrink policy")
    p.add_argument("--baselines", nargs="+", default=["mean", "loo"], help="mean (paper) | loo | ema | none")
    p.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                   help="also run uniform random search on the same seeds (default on)")
    p.add_argument("--protocol", default="fast", help="evaluation protocol (default fast)")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="extra gym.make kwargs as JSON")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    results = pathlib.Path(args.results)
    done = done_keys(results)
    jobs = [("random", None, s) for s in args.seeds] if args.random else []
    jobs += [(label_of(lr, b), {"lr_shrink": lr, "baseline": b}, s)
             for (lr, b), s in itertools.product(itertools.product(args.lrs, args.baselines), args.seeds)]
    todo = [(label, hparams, seed) for label, hparams, seed in jobs
            if run_key(args.env, "random" if hparams is None else "n2n", seed, args.protocol,
                       None if hparams is None else "joint", args.budget, None if hparams is None else label) not in done]
    for label, hparams, seed in tqdm(todo, desc="n2n hparams", unit="run"):
        if hparams is None:
            run_one(args.env, "random", seed, args.budget, protocol=args.protocol, env_kwargs=args.env_kwargs,
                    results=results)
        else:
            run_one(args.env, "n2n", seed, args.budget, protocol=args.protocol, env_kwargs=args.env_kwargs,
                    stage="joint", hparams=hparams, results=results, label=label)
    records = read_records(results)
    for sec in leaderboard.leaderboard(records):
        print(leaderboard.render_md([sec]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
