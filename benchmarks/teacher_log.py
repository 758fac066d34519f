"""Per-epoch training loss and wall time of a teacher training, from its progress log
(the tqdm bar of ``n2n_gym.teachers.train_teacher``: ``[elapsed<left, ...] epoch=N, loss=X``),
with the final validation and test accuracy of the trained checkpoint: JSON and a PNG.

    n2n-gym teacher train N2N-ResNet20-CIFAR10-v0 2> train.log   # the log of a training
    python -m n2n_gym.benchmarks.teacher_log train.log \\
        --checkpoint CHECKPOINT.pt --out benchmarks/results/teacher_resnet20_cifar10

The data variant is read from the bar's description ("training teacher NAME on VARIANT")
and named in the figure (e.g. "cifar10-jpeg (npz, JPEG-derived)").
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

_BAR = re.compile(r"training teacher (\S+) on (.+?):\s+\d+%.*?\| *(\d+)/(\d+) \[([\d:]+)<[^\]]*\]?,? *epoch=(\d+), loss=([\d.]+)")


def _seconds(clock: str) -> float:
    parts = [int(p) for p in clock.split(":")]
    total = 0
    for p in parts:
        total = total * 60 + p
    return float(total)


def parse_log(text: str) -> dict:
    """{"teacher", "data_variant", "total_steps", "epochs": [{"epoch", "train_loss", "step", "wall_seconds"}]}:
    each epoch's first bar update after it ended (its loss is in the postfix)."""
    epochs: dict[int, dict] = {}
    teacher = variant = None
    total = None
    for chunk in text.replace("\r", "\n").split("training teacher ")[1:]:
        m = _BAR.match("training teacher " + chunk.split("\n")[0])
        if not m:
            continue
        teacher, variant, step, total, clock, epoch, loss = m.groups()
        epoch = int(epoch)
        if epoch not in epochs:
            epochs[epoch] = {"epoch": epoch, "train_loss": float(loss), "step": int(step),
                             "wall_seconds": _seconds(clock)}
    return {"teacher": teacher, "data_variant": variant, "total_steps": int(total) if total else None,
            "epochs": [epochs[k] for k in sorted(epochs)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="teacher_log", description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="the training's progress log")
    p.add_argument("--checkpoint", default=None, help="the trained teacher (its val/test accuracy go in)")
    p.add_argument("--out", required=True, help="output path without suffix (.json and .png are written)")
    args = p.parse_args(argv)
    result = parse_log(pathlib.Path(args.log).read_text(errors="replace"))
    if not result["epochs"]:
        raise SystemExit(f"{args.log}: no 'epoch=N, loss=X' progress found")
    if args.checkpoint:
        import torch

        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        result.update({k: ckpt.get(k) for k in ("val_accuracy", "test_accuracy", "recipe", "data_digest")})
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from n2n_gym.utils.files import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = result["epochs"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([e["epoch"] for e in ep], [e["train_loss"] for e in ep], marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (label-smoothed CE)")
    top = ax.secondary_xaxis("top", functions=(lambda e: e, lambda e: e))
    top.set_xticks([e["epoch"] for e in ep][::5])
    top.set_xticklabels([f"{e['wall_seconds'] / 60:.0f}m" for e in ep][::5], fontsize=7)
    acc = ""
    if result.get("val_accuracy") is not None:
        acc = f"; final val {100 * result['val_accuracy']:.2f} %, test {100 * result['test_accuracy']:.2f} %"
    ax.set_title(f"{result['teacher']} on {result['data_variant']}{acc}\n(top axis: wall time)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
