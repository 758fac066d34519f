"""n2n_gym.evaluation.deploy: latency, peak memory and size of exported files, each run in a fresh process."""

from __future__ import annotations

import pytest

from n2n_gym.evaluation import deploy
from n2n_gym.ir.build import build
from n2n_gym.ir.edits import apply_decisions
from n2n_gym.ir.students import export_student


@pytest.fixture(scope="module")
def exported(digits_teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    teacher = digits_teacher.module
    arch = digits_teacher.architecture
    student = build(apply_decisions(arch, [0.25] * len(arch), 4))
    files = {}
    for who, module in (("teacher", teacher), ("student", student)):
        out = export_student(module, folder, stem=who)
        assert out["onnxruntime check"].startswith("ok")
        files[who] = {"onnxruntime": out["onnx"], "torch.export": out["torch.export"]}
    return files, arch, student.arch


def test_measure_reports_latency_quartiles_memory_and_size(exported):
    files, arch, _ = exported
    m = deploy.measure(files["teacher"]["onnxruntime"], arch.input_shape, (1, 16), repeats=5)
    assert set(m["latency_ms"]) == {"1", "16"}
    for q in m["latency_ms"].values():
        assert 0 < q["q1"] <= q["median"] <= q["q3"] and q["n"] == 5
    assert m["peak_rss_mb"] > m["inference_peak_mb"] >= 0 and m["file_mb"] > 0
    assert len(m["raw_latency_ms"]["16"]) == 5


def test_compare_pairs_teacher_and_student_per_runtime(exported):
    files, arch, student_arch = exported
    res = deploy.compare(files["teacher"], files["student"], arch.input_shape, (1, 32), rounds=2, repeats=3,
                         teacher_params=arch.params, student_params=student_arch.params)
    assert set(res["runtimes"]) == {"onnxruntime", "torch.export"}
    for r in res["runtimes"].values():
        assert all(v > 0 for v in r["speedup"].values())
        # each round's ratio is kept (the median alone hid how far rounds disagree) and the table gives their range
        assert all(len(r["speedup_rounds"][b]) == 2 and r["speedup"][b] == pytest.approx(
            sum(r["speedup_rounds"][b]) / 2) for b in ("1", "32"))
        assert f"{r['speedup']['1']:.2f}x{deploy.speedup_range(r, 1)} |" in deploy.table(res)
        assert deploy.speedup_range(r, 1).startswith(" (") and deploy.speedup_range({"speedup": r["speedup"]}, 1) == ""
        assert r["teacher"]["file_mb"] > r["student"]["file_mb"]  # 4x narrower layers: a smaller file
    assert res["params_ratio"] == arch.params / student_arch.params
    text = deploy.table(res)
    assert text.count("| onnxruntime |") == 2 and "paired rounds" in text
    # memory in the table is inference's own peak, not the process's (imports dominate that, ~0.8 GiB for torch)
    ort = res["runtimes"]["onnxruntime"]
    cell = f"| {ort['teacher']['inference_peak_mb']:.0f} / {ort['student']['inference_peak_mb']:.0f} |"
    assert cell in text and "inference MiB" in text


def test_bad_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"\.onnx or \.pt2"):
        deploy.measure(tmp_path / "model.pth", (1, 8, 8))
    with pytest.raises(FileNotFoundError):
        deploy.measure(tmp_path / "missing.onnx", (1, 8, 8))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="onnxruntime could not run"):
        deploy.measure(bad, (1, 8, 8), repeats=1)
    with pytest.raises(ValueError, match="batch sizes"):
        deploy.measure(bad, (1, 8, 8), batch_sizes=(0,))
