"""Does TAS's searched architecture land in the FLOPs band of its target?

TAS's cost loss aims the argmax architecture's FLOPs at the band [R - t, R] (R = target
ratio x teacher FLOPs, t = 5 % of the teacher FLOPs). This benchmark runs short searches
and reports where the derived student's FLOPs land:

- ResNet-20 and ResNet-56 on CIFAR-10 (the JPEG-derived npz through
  ``load_dataset("cifar10", root=$N2N_DATA)``), searchable network initialised at random,
  which is TAS's own setting (its search trains the searchable network from scratch);
  the search runs on a subset of the training split;
- the embedded digits env with its trained teacher, through the whole pipeline
  (``agents.tas.TAS``: search, derived student scored by the env's fast protocol).

For every run both students are reported: the one TAS selects (``best-in-band``: the most
accurate in-band genotype checkpoint, the official code's selection) and the final argmax
(``last``), and the share of checkpoints that were in the band.

    python -m n2n_gym.benchmarks.tas_flops                       # everything, small budget, 1 thread
    python -m n2n_gym.benchmarks.tas_flops --cases digits --seeds 0 1 2
    python -m n2n_gym.benchmarks.tas_flops --cases resnet20 --steps 300 --batch-size 32

Measured (1 CPU thread, shared machine; CIFAR: 300 steps of batch 32 on 4,096 images,
checkpoints every 10 steps; digits: 600 steps of batch 64): the selected student landed
in the band in all 7 runs (ResNet-20 0.525 / 0.512 of the teacher's FLOPs for target
0.55; ResNet-56 0.451 / 0.450 for 0.47; digits 0.465 / 0.478 / 0.487 for 0.50), the final
argmax in 1 of 7 (it flips across the band from step to step at these budgets: 9 to 22
of 30 CIFAR checkpoints and 4 to 19 of 60 digits checkpoints were in the band).

Results: ``benchmarks/results/tas_flops.json`` (rewritten after every run; finished runs
are kept and skipped when started again with the same settings) and a table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.agents.tas import TAS, Args, make_searchable, search
from n2n_gym.data.datasets import load_dataset
from n2n_gym.ir.edits import apply_decisions
from n2n_gym.ir.zoo import teacher_architecture

RESULTS = ROOT / "benchmarks" / "results" / "tas_flops.json"
# target FLOPs ratios: TAS's searched CIFAR-10 configurations (ResNet-20: 45 % reduction,
# ResNet-56: about 53 %), and one half for the embedded teacher
CASES = {"resnet20": ("resnet20", 0.55), "resnet56": ("resnet56", 0.47), "digits": ("digitsnet", 0.5)}


def default_data_root() -> str | None:
    if os.environ.get("N2N_DATA"):
        return os.environ["N2N_DATA"]
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if (shared / "cifar10" / "cifar10-train.npz").is_file() else None


def run_cifar(case: str, seed: int, opts) -> dict:
    name, ratio = CASES[case]
    data = load_dataset("cifar10", root=opts.data_root)
    arch = teacher_architecture(name, data.info.input_shape, data.info.num_classes)
    args = Args(flops_ratio=ratio, steps=opts.steps, batch_size=opts.batch_size, train_images=opts.train_images,
                select_every=opts.select_every, eval_images=opts.eval_images, init="random", seed=seed,
                progress=False, log_every=max(1, opts.steps // 10))
    net = make_searchable(arch, args)
    x, y = data.subset("train", args.train_images, seed=seed)
    result = search(net, x, y, data.info, args, data.normalize,
                    on_log=lambda row: print(f"  {case} seed {seed} step {row['step']}: argmax FLOPs ratio "
                                             f"{row['argmax_flops_ratio']:.3f}, E[F] ratio "
                                             f"{row['expected_flops_ratio']:.3f}, arch CE {row['arch_ce']:.3f}",
                                             flush=True))
    last = apply_decisions(arch, net.decisions(), net.min_width)
    train_split = len(data.train_idx)
    return {
        "teacher": "random init (TAS's search trains the searchable network from scratch)",
        "data": f"{data.variant}: {len(x)} of {train_split} training-split images",
        "teacher_flops": arch.flops, "flops": result.architecture.flops, "params": result.architecture.params,
        "teacher_params": arch.params,
        "flops_ratio": result.flops_ratio, "in_band": result.in_band,
        "last_flops_ratio": last.flops / arch.flops,
        "last_in_band": (ratio - args.tolerance) * arch.flops <= last.flops <= ratio * arch.flops,
        "selected_step": result.selected_step, "selected_accuracy": result.selected_accuracy,
        "checkpoints": len(result.checkpoints), "in_band_checkpoints": sum(c["in_band"] for c in result.checkpoints),
        "checkpoint_flops_ratios": [round(c["flops_ratio"], 4) for c in result.checkpoints],
        "group_ratios": result.group_ratios, "stage_depths": result.stage_depths,
        "steps": result.steps, "seconds": result.seconds,
        "student_epochs": result.search_flops / (result.architecture.flops * train_split),
        "architecture": result.architecture.to_json(),
        "log": result.log,
    }


def run_digits(seed: int, opts) -> dict:
    name, ratio = CASES["digits"]
    args = Args(flops_ratio=ratio, epochs=opts.digits_epochs, batch_size=64, seed=seed, progress=False,
                protocol="fast", device="cpu", env_kwargs={"progress": False}, log_every=100)
    tas = TAS(args)
    record = tas.run()
    result = tas.result
    net = result.network
    last = apply_decisions(net.arch, net.decisions(), net.min_width)
    f0 = net.arch.flops
    return {
        "teacher": "the env's trained teacher (default digits recipe); searchable network initialised from it",
        "data": "digits: the whole training split",
        "teacher_flops": f0, "flops": record["flops"], "params": record["params"],
        "teacher_params": record["teacher_params"],
        "flops_ratio": record["flops_ratio"], "in_band": record["in_band"],
        "last_flops_ratio": last.flops / f0,
        "last_in_band": (ratio - args.tolerance) * f0 <= last.flops <= ratio * f0,
        "selected_step": result.selected_step, "selected_accuracy": result.selected_accuracy,
        "checkpoints": len(result.checkpoints), "in_band_checkpoints": sum(c["in_band"] for c in result.checkpoints),
        "checkpoint_flops_ratios": [round(c["flops_ratio"], 4) for c in result.checkpoints],
        "group_ratios": result.group_ratios, "stage_depths": result.stage_depths,
        "steps": result.steps, "seconds": result.seconds, "student_epochs": record["student_epochs"],
        "reward": record["reward"], "accuracy": record["accuracy"], "test_accuracy": record["test_accuracy"],
        "teacher_accuracy": record["teacher_accuracy"], "compression": record["compression"],
        "architecture": record["architecture"], "actions": record["actions"],
        "log": result.log,
    }


def settings(case: str, opts) -> dict:
    if case == "digits":
        return {"epochs": opts.digits_epochs, "batch_size": 64}
    return {"steps": opts.steps, "batch_size": opts.batch_size, "train_images": opts.train_images,
            "select_every": opts.select_every, "eval_images": opts.eval_images}


def table(runs: list[dict]) -> str:
    rows = [f"{'case':<9} {'seed':>4} {'target':>6} {'band':>11} {'selected':>8} {'in':>3} {'last':>6} {'in':>3} "
            f"{'ckpt in band':>12} {'steps':>5} {'student-ep':>10} {'seconds':>7}"]
    for r in runs:
        band = f"[{r['target'] - r['tolerance']:.2f},{r['target']:.2f}]"
        rows.append(f"{r['case']:<9} {r['seed']:>4} {r['target']:>6.2f} {band:>11} {r['flops_ratio']:>8.3f} "
                    f"{'yes' if r['in_band'] else 'no':>3} {r['last_flops_ratio']:>6.3f} "
                    f"{'yes' if r['last_in_band'] else 'no':>3} "
                    f"{r['in_band_checkpoints']:>5}/{r['checkpoints']:<6} {r['steps']:>5} {r['student_epochs']:>10.2f} "
                    f"{r['seconds']:>7.0f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m n2n_gym.benchmarks.tas_flops", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=300, help="search steps on CIFAR-10 (weight + architecture step pairs)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size on CIFAR-10")
    p.add_argument("--train-images", type=int, default=4096, help="CIFAR-10 training-split images of the search")
    p.add_argument("--select-every", type=int, default=10, help="steps between genotype checkpoints on CIFAR-10")
    p.add_argument("--eval-images", type=int, default=256, help="images scoring an in-band checkpoint on CIFAR-10")
    p.add_argument("--digits-epochs", type=int, default=60, help="search epochs on the digits env (batch 64)")
    p.add_argument("--data-root", default=default_data_root(), help="folder with cifar10/cifar10-{train,test}.npz")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    out = pathlib.Path(opts.out)
    saved = json.loads(out.read_text()) if out.exists() else {"runs": []}
    runs = saved.get("runs", [])
    for case in opts.cases:
        _, ratio = CASES[case]
        for seed in opts.seeds:
            key = {"case": case, "seed": seed, "settings": settings(case, opts)}
            if any(all(r.get(k) == v for k, v in key.items()) for r in runs):
                print(f"{case} seed {seed}: done before, skipped")
                continue
            print(f"{case} seed {seed}: searching ...", flush=True)
            start = time.perf_counter()
            res = run_digits(seed, opts) if case == "digits" else run_cifar(case, seed, opts)
            runs = [r for r in runs if not (r["case"] == case and r["seed"] == seed)]
            runs.append({**key, "target": ratio, "tolerance": Args.tolerance,
                         "wall_seconds": time.perf_counter() - start, "threads": opts.threads, **res})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"benchmark": "tas_flops", "torch": torch.__version__,
                                       "defaults": dataclasses.asdict(Args()), "runs": runs}, indent=1))
            print(table([runs[-1]]).splitlines()[-1], flush=True)
    print(table(sorted(runs, key=lambda r: (r["case"], r["seed"]))))


if __name__ == "__main__":
    main(sys.argv[1:])
