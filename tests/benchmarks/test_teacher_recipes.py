"""benchmarks/teacher_recipes.py at a tiny scale on the CPU: a paper teacher trains one epoch
on a few CIFAR-shaped images, and the JSON and Markdown results hold its time and accuracy."""

from __future__ import annotations

import json

import numpy as np
import torch
from n2n_gym.benchmarks import teacher_recipes

from n2n_gym.teachers.teacher import weights_sha256


def test_teacher_recipes_tiny_run_on_cpu(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "c.npz"
    np.savez(path, x=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), y=np.arange(200) % 10)
    out = tmp_path / "r.json"
    argv = ["--teachers", "vgg11", "--dataset", f"npz:{path}", "--epochs", "1", "--limit-images", "64",
            "--device", "cpu", "--out", str(out), "--out-dir", str(tmp_path / "t"), "--eval-every-epoch",
            "--no-progress"]
    assert teacher_recipes.main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["teacher"] == "vgg11" and row["recipe"]["epochs"] == 1 and row["device"] == "cpu"
    assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1 and row["train_seconds"] > 0
    assert [e["epoch"] for e in row["epochs"]] == [1] and "val_accuracy" in row["epochs"][0]
    assert "first 64 images" in row["data_variant"]
    ckpt = torch.load(row["path"], weights_only=True)
    assert weights_sha256(ckpt["state_dict"]) == row["sha256"]
    assert "| vgg11 |" in out.with_suffix(".md").read_text()
