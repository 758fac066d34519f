"""benchmarks/teacher_log.py: the log of a real (tiny) teacher training, parsed and plotted."""

from __future__ import annotations

import json


def test_teacher_log_parses_the_progress_bar(tmp_path) -> None:
    """benchmarks/teacher_log.py reads train_teacher's own bar: a real (tiny) training's log."""
    import contextlib
    import io

    from n2n_gym.benchmarks import teacher_log

    from n2n_gym.data.datasets import load_dataset
    from n2n_gym.ir.zoo import teacher_architecture
    from n2n_gym.teachers.teacher import Recipe, train_teacher

    data = load_dataset("digits")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train_teacher(teacher_architecture("digitsnet", (1, 8, 8), 10), data, Recipe(epochs=2, batch_size=256),
                      tmp_path / "t.pt", progress=True)
    log = tmp_path / "train.log"
    log.write_text(err.getvalue())
    parsed = teacher_log.parse_log(log.read_text())
    assert parsed["teacher"] == "digitsnet" and parsed["data_variant"] == data.variant
    assert [e["epoch"] for e in parsed["epochs"]] == [1, 2] and all(e["train_loss"] > 0 for e in parsed["epochs"])
    assert teacher_log.main([str(log), "--checkpoint", str(tmp_path / "t.pt"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o.png").stat().st_size > 0 and json.loads((tmp_path / "o.json").read_text())["val_accuracy"] >= 0
