"""Train the N2N paper's teachers (ResNet-18/34, VGG-11/19 on CIFAR-10) with the data set's
recipe and record wall time and accuracy: JSON plus a Markdown table.

A GPU job: on 2 CPU cores one epoch of a ResNet-34 takes hours (``n2n-gym teacher list``
estimates it). The recipe is ``n2n_gym.teachers.RECIPES[dataset]`` (CIFAR-10: 30 epochs,
SGD Nesterov, one-cycle, label smoothing 0.1, on ``recipe.threads`` CPU threads), every
epoch's mean training loss and wall time are recorded, validation accuracy too with
``--eval-every-epoch``, and validation and test accuracy at the end. A trained teacher is
written in the teacher checkpoint format (``--out-dir``), ready for
``n2n-gym teacher pin ENV_ID PATH``. Interrupted runs resume from the last epoch.

    python -m n2n_gym.benchmarks.teacher_recipes --device cuda               # the paper teachers
    python -m n2n_gym.benchmarks.teacher_recipes --teachers resnet18 --epochs 1 --limit-images 256   # smoke test

``--limit-images N`` keeps the first N images of every split (smoke tests only: the
accuracies then mean nothing). On CIFAR-10 from the npz arrays the data variant is
"cifar10-jpeg (npz, JPEG-derived)", written into every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import sys
import time

import torch

from n2n_gym.data.datasets import Dataset, load_dataset
from n2n_gym.evaluation.distill import accuracy
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers.teacher import Recipe, default_recipe, train_teacher
from n2n_gym.utils.devices import resolve_device
from n2n_gym.utils.files import atomic_write_text

PAPER_TEACHERS = ("resnet18", "resnet34", "vgg11", "vgg19")


def limited(data: Dataset, n: int) -> Dataset:
    """The first ``n`` images of every split (a fresh Dataset: no shared memo)."""
    return Dataset(info=data.info, variant=f"{data.variant} [first {n} images per split]", x_train=data.x_train,
                   y_train=data.y_train, x_test=data.x_test[:n], y_test=data.y_test[:n], train_idx=data.train_idx[:n],
                   val_idx=data.val_idx[:n])


def run_one(name: str, data: Dataset, recipe: Recipe, device: str, out_dir: pathlib.Path, progress: bool,
            eval_every_epoch: bool) -> dict:
    arch = teacher_architecture(name, data.info.input_shape, data.info.num_classes)
    path = out_dir / f"{name}-{data.info.name}-{data.digest[:12]}-e{recipe.epochs}.pt"
    epochs: list[dict] = []
    start = time.perf_counter()

    def on_epoch(epoch: int, loss: float, model) -> None:
        row = {"epoch": epoch, "train_loss": loss, "wall_seconds": time.perf_counter() - start}
        if eval_every_epoch:
            row["val_accuracy"] = accuracy(model.eval(), data, *data.split("val"))
        epochs.append(row)

    sha = train_teacher(arch, data, recipe, path, device, progress=progress, on_epoch=on_epoch)
    meta = json.loads(path.with_suffix(".json").read_text())
    return {"teacher": name, "params": arch.params, "data_variant": data.variant, "data_digest": data.digest,
            "recipe": dataclasses.asdict(recipe), "device": device, "sha256": sha, "path": str(path),
            "val_accuracy": meta["val_accuracy"], "test_accuracy": meta["test_accuracy"],
            "train_seconds": meta.get("train_seconds"), "wall_seconds_this_run": time.perf_counter() - start,
            "epochs": epochs}


def markdown(rows: list[dict]) -> str:
    lines = ["| teacher | params | data | epochs | device | train time | val acc | test acc |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        minutes = (r["train_seconds"] or 0) / 60
        lines.append(f"| {r['teacher']} | {r['params']:,} | {r['data_variant']} | {r['recipe']['epochs']} | "
                     f"{r['device']} | {minutes:.1f} min | {100 * r['val_accuracy']:.2f} % | "
                     f"{100 * r['test_accuracy']:.2f} % |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teacher_recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", default=",".join(PAPER_TEACHERS), help="comma-separated zoo names")
    p.add_argument("--dataset", default="cifar10", help="data set (default %(default)s; npz:/path works)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--limit-images", type=int, default=None, help="first N images per split (smoke tests)")
    p.add_argument("--eval-every-epoch", action="store_true", help="validation accuracy after every epoch")
    p.add_argument("--out", default="benchmarks/results/teacher_recipes.json", help="JSON results (a .md beside it)")
    p.add_argument("--out-dir", default="benchmarks/results/teachers", help="trained teacher checkpoints")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.teachers.split(",") if n.strip()]
    for n in names:
        teacher_architecture(n)  # KeyError with the zoo's names, before any work
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    if args.limit_images is not None and args.limit_images < 1:
        raise SystemExit(f"--limit-images must be >= 1, got {args.limit_images}")
    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    if args.limit_images:
        data = limited(data, args.limit_images)
    data = data.to(device)
    recipe = default_recipe(data.info.name)
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    out = pathlib.Path(args.out)
    rows = []
    for name in names:
        row = run_one(name, data, recipe, device, pathlib.Path(args.out_dir), args.progress, args.eval_every_epoch)
        rows.append(row)
        print(f"{name}: val {100 * row['val_accuracy']:.2f} %, test {100 * row['test_accuracy']:.2f} %, "
              f"{(row['train_seconds'] or 0) / 60:.1f} min on {device}", file=sys.stderr)
        result = {"benchmark": "teacher_recipes", "torch": str(torch.__version__), "host": platform.node(),
                  "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor(),
                  "limit_images": args.limit_images, "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1))
        atomic_write_text(out.with_suffix(".md"), markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
