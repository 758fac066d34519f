"""benchmarks/gpu_eval.py at a tiny scale on the CPU."""

from __future__ import annotations

from conftest import SMALL_DIGITS_RECIPE


# ---------------------------------------------------------------------------- benchmarks at tiny scale
def test_gpu_eval_runs_on_cpu(tmp_path, digits_teacher):
    import json

    from n2n_gym.benchmarks import gpu_eval

    out = gpu_eval.main(["--device", "cpu", "--protocol", "tiny", "--students", "2", "--warmup", "1",
                         "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE}),
                         "--out", str(tmp_path / "g.json")])
    assert out["students"] == 2 and out["students_per_hour"] > 0
    assert 0 < out["fraction_of_peak"] and out["peak_source"].startswith("measured")
    assert json.loads((tmp_path / "g.json").read_text())["device"] == "cpu"
