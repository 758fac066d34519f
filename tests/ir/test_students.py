"""n2n_gym.ir.students: a student saved as ``<stem>.json`` + ``<stem>.pt`` loads back in one call
from the folder, either file or the stem (same architecture, same weights, eval mode, its JSON as
``student_info``); bad paths and foreign files are refused with the reason; ``export_student``
writes a torch.export program with a dynamic batch and reports a failure instead of raising."""

from __future__ import annotations

import json
import pathlib
import sys
import zipfile

import pytest
import torch

from n2n_gym.ir.build import build
from n2n_gym.ir.edits import apply_decisions
from n2n_gym.ir.students import FORMAT, export_student, load_student, save_student
from n2n_gym.ir.zoo import teacher_architecture

DIGITS = teacher_architecture("digitsnet", input_shape=(1, 8, 8), num_classes=10)
INFO = {"normalization": {"mean": [0.3054], "std": [0.376]}, "metrics": {"accuracy": 0.5}, "env_id": "N2N-test"}


def _student(seed: int = 0):
    """A small digits student: the second conv removed, every width a quarter."""
    torch.manual_seed(seed)
    decisions = [0.25] * len(DIGITS)
    decisions[1] = None
    return build(apply_decisions(DIGITS, decisions, 4))


def _images(n: int = 5) -> torch.Tensor:
    return torch.randn(n, *DIGITS.input_shape, generator=torch.Generator().manual_seed(1))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_from_the_folder_either_file_or_the_stem(tmp_path):
    student = _student()
    json_path, pt_path = save_student(tmp_path, student, **INFO)
    assert (json_path, pt_path) == (tmp_path / "student.json", tmp_path / "student.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.json", "student.pt"]  # no temp file left
    doc = json.loads(json_path.read_text())
    assert doc["format"] == FORMAT == "n2n-gym-student" and doc["version"] == 1
    assert doc["architecture"] == student.arch.to_dict() and doc["weights"] == "student.pt"
    assert (doc["params"], doc["flops"]) == (student.arch.params, student.arch.flops)
    assert {k: doc[k] for k in INFO} == INFO
    student.eval()
    with torch.no_grad():
        expected = student(_images())
    for path in (tmp_path, json_path, pt_path, tmp_path / "student", str(json_path)):
        loaded = load_student(path)
        assert loaded.arch == student.arch and not loaded.training
        assert _same_weights(loaded, student)
        assert loaded.student_info == doc
        with torch.no_grad():
            assert torch.equal(loaded(_images()), expected)


def test_the_weights_are_a_plain_state_dict_safe_to_load(tmp_path):
    student = _student()
    _, pt_path = save_student(tmp_path, student)
    state = torch.load(pt_path, weights_only=True)
    assert state.keys() == student.state_dict().keys()
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())


def test_a_stem_in_a_new_folder(tmp_path):
    stem = tmp_path / "runs" / "a" / "best"
    json_path, pt_path = save_student(stem, _student())
    assert (json_path, pt_path) == (stem.with_suffix(".json"), stem.with_suffix(".pt"))
    assert load_student(stem.with_suffix(".pt")).arch == _student().arch
    with pytest.raises(FileNotFoundError, match="no student architecture at .*student.json"):
        load_student(stem.parent)  # a folder means student.* in it


def test_saving_again_replaces_the_student(tmp_path):
    save_student(tmp_path, _student(seed=0))
    second = _student(seed=1)
    assert not _same_weights(second, _student(seed=0))
    save_student(tmp_path, second)
    assert _same_weights(load_student(tmp_path), second)


def test_the_json_names_its_weights_file(tmp_path):
    student = _student()
    json_path, _ = save_student(tmp_path, student)
    alias = tmp_path / "alias.json"  # no alias.pt: the weights are the ones the JSON names
    alias.write_text(json_path.read_text())
    assert _same_weights(load_student(alias), student)


def test_bad_paths_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no student architecture at"):
        load_student(tmp_path)
    json_path, pt_path = save_student(tmp_path, _student())
    doc = json.loads(json_path.read_text())
    pt_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"the student's weights .*student.pt are missing"):
        load_student(tmp_path)
    json_path.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(ValueError, match=r"is not an n2n-gym student \(format 'something-else'\)"):
        load_student(json_path)


def test_inputs_are_normalised_as_the_json_says(digits_teacher, digits_data, tmp_path):
    """``(x / 255 - mean) / std`` per channel, with the saved normalization, gives the teacher's
    own validation accuracy back from the loaded file."""
    info = digits_data.info
    save_student(tmp_path, digits_teacher.module, normalization={"mean": list(info.mean), "std": list(info.std)})
    loaded = load_student(tmp_path)
    norm = loaded.student_info["normalization"]
    x, y = digits_data.split("val")
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        acc = float((loaded((x.float() / 255 - mean) / std).argmax(1) == y).float().mean())
    assert acc == pytest.approx(digits_teacher.val_accuracy, abs=1e-6)


def test_export_has_a_dynamic_batch(tmp_path):
    student = _student().eval()
    out = export_student(student, tmp_path, stem="small", onnx=False)
    assert out == {"torch.export": str(tmp_path / "small.pt2")}
    program = torch.export.load(tmp_path / "small.pt2").module()
    for n in (1, 7):
        x = _images(n)
        with torch.no_grad():
            torch.testing.assert_close(program(x), student(x), rtol=1e-5, atol=1e-5)


def test_a_failed_export_is_reported_not_raised(tmp_path):
    out = export_student(_student(), tmp_path / "missing-folder", onnx=False)
    assert set(out) == {"torch.export"} and out["torch.export"].startswith("failed: ")


def test_the_exported_files_name_no_machine_path(tmp_path):
    """torch.export and the dynamo exporter write each op's Python stack (site-packages, home
    folder) into the files; a student shared from a run folder must not carry the exporting
    machine's paths, and the files still run."""
    student = _student().eval()
    out = export_student(student, tmp_path, stem="small")
    assert out["onnxruntime check"].startswith("ok"), out
    onnx_bytes = (tmp_path / "small.onnx").read_bytes()
    with zipfile.ZipFile(tmp_path / "small.pt2") as z:  # (compressed members: read each one)
        pt2_bytes = b"".join(z.read(name) for name in z.namelist())
    for raw in (onnx_bytes, pt2_bytes):
        for path in {sys.prefix, str(pathlib.Path(torch.__file__).parent), str(pathlib.Path(__file__).parent)}:
            assert path.encode() not in raw, path
        assert b"stack_trace" not in raw
    assert not list(tmp_path.glob("*.partial"))
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "small.pt2").module()(x), student(x))
