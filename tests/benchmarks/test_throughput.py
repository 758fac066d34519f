"""benchmarks/throughput.py at a tiny scale."""

from __future__ import annotations

from conftest import SMALL_DIGITS_RECIPE


def test_throughput_benchmark_tiny(tmp_path, digits_teacher):
    import json

    from n2n_gym.benchmarks import throughput

    out = throughput.main(["--protocol", "tiny", "--parts", "a,d", "--repeats", "1", "--images", "64", "--epochs", "1",
                           "--lever-students", "1", "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE}),
                           "--out", str(tmp_path / "t")])
    assert set(out["distill"]["median_images_per_s"]) == {"project_aug", "reference_aug", "project_noaug",
                                                          "reference_noaug", "project_shared"}
    assert out["distill"]["speedup_shared_logits"] > 0
    assert out["levers"]["students"] == 1 and all(v > 0 for v in out["levers"]["seconds"].values())
    assert (tmp_path / "t.png").exists() and (tmp_path / "t.json").exists()
