"""Saved students: weights + architecture JSON, loadable in one call.

``n2n-gym compress`` writes a student as two files in its run folder:

- ``student.json``: ``{"format": "n2n-gym-student", "architecture": <IR dict>,
  "normalization": {"mean", "std"}, "metrics": {...}, ...}``;
- ``student.pt``: the ``state_dict`` of the built network (``torch.load(...,
  weights_only=True)`` safe).

``n2n_gym.load_student(path)`` takes the run folder, either file, or their common stem,
and returns the network (an ``nn.Module`` in eval mode; ``.arch`` is its architecture and
``.student_info`` the JSON). Inputs are float NCHW images normalised as
``(x / 255 - mean) / std`` per channel (``student_info["normalization"]``), ``x`` the data
set's uint8 pixels (``normalization["pixels"]`` says how they come from the source's images
where they differ: scikit-learn's 0-16 digits, MNIST padded to 32x32).
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from typing import Any

import torch

from n2n_gym.ir.arch import Architecture
from n2n_gym.ir.build import Network, build

FORMAT = "n2n-gym-student"
STEM = "student"


def _paths(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / STEM
    elif p.suffix in (".json", ".pt"):
        p = p.with_suffix("")
    return p.with_suffix(".json"), p.with_suffix(".pt")


def save_student(path: str | os.PathLike, module: Network, **info: Any) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``module`` as ``<path>.json`` + ``<path>.pt`` (``path`` a folder: ``student.*`` in
    it). ``info`` (metrics, normalization, env id, ...) goes into the JSON."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / STEM
    p.parent.mkdir(parents=True, exist_ok=True)
    json_path, pt_path = p.with_suffix(".json"), p.with_suffix(".pt")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = pt_path.with_name(pt_path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, pt_path)
    doc = {"format": FORMAT, "version": 1, "architecture": module.arch.to_dict(),
           "params": module.arch.params, "flops": module.arch.flops, "weights": pt_path.name, **info}
    tmp = json_path.with_name(json_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, json_path)
    return json_path, pt_path


def load_student(path: str | os.PathLike, device: str | torch.device = "cpu") -> Network:
    """The student saved at ``path`` (a run folder, ``student.json``, ``student.pt`` or their
    stem), built and loaded, in eval mode."""
    json_path, pt_path = _paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"no student architecture at {json_path} (expected a run folder of "
                                "`n2n-gym compress`, or a student .json / .pt)")
    doc = json.loads(json_path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not an n2n-gym student (format {doc.get('format')!r})")
    weights = json_path.parent / doc.get("weights", pt_path.name)
    if not weights.is_file():
        raise FileNotFoundError(f"the student's weights {weights} are missing")
    arch = Architecture.from_dict(doc["architecture"])
    module = build(arch, device)
    module.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    module.eval()
    module.student_info = doc
    return module


def export_student(module: Network, folder: str | os.PathLike, stem: str = STEM, onnx: bool = True) -> dict[str, str]:
    """``torch.export`` (``<stem>.pt2``) and ONNX (``<stem>.onnx``, dynamo exporter) files of
    ``module`` with a dynamic batch dimension; returns ``{format: path or error}``."""
    folder = pathlib.Path(folder)
    module = module.eval().cpu()
    example = torch.zeros(2, *module.arch.input_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    out: dict[str, str] = {}
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        for node in program.graph.nodes:  # the same machine paths as the ONNX file's (see _MACHINE_METADATA)
            node.meta.pop("stack_trace", None)
        with warnings.catch_warnings():  # a harmless notice about weight grouping of CPU tensors
            warnings.filterwarnings("ignore", message="No complete tensor found")
            torch.export.save(program, folder / f"{stem}.pt2")
        out["torch.export"] = str(folder / f"{stem}.pt2")
    except Exception as exc:  # report, do not lose the run
        out["torch.export"] = f"failed: {type(exc).__name__}: {exc}"
    if onnx:
        try:
            torch.onnx.export(module, (example,), str(folder / f"{stem}.onnx"), dynamo=True,
                              dynamic_shapes=({0: batch},), input_names=["images"], output_names=["logits"],
                              external_data=False, verbose=False)
            _strip_stack_traces(folder / f"{stem}.onnx")
            out["onnx"] = str(folder / f"{stem}.onnx")
        except Exception as exc:
            out["onnx"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            out["onnxruntime check"] = _check_onnx(module, folder / f"{stem}.onnx")
    return out


# Node metadata the dynamo exporter writes: the Python stack of each op, full of the exporting
# machine's paths (site-packages, home folder); it serves debugging the exporter, not the model.
_MACHINE_METADATA = ("pkg.torch.onnx.stack_trace",)


def _strip_stack_traces(path: pathlib.Path) -> None:
    """Removes :data:`_MACHINE_METADATA` from every node of the ONNX file at ``path`` (graph,
    subgraphs and functions), rewriting it atomically, so that a shared file names no machine path."""
    import onnx

    model = onnx.load(str(path))

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key not in _MACHINE_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    os.replace(partial, path)


def _check_onnx(module: Network, path: pathlib.Path, batch: int = 3, tol: float = 1e-4) -> str:
    """Runs the exported file in ONNX Runtime on a batch size other than the export's and
    compares it with the module's logits (max abs difference, ``tol``); a text verdict."""
    try:
        import onnxruntime

        x = torch.randn(batch, *module.arch.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = module(x).numpy()
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        diff = float(abs(got - expected).max())
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    verdict = "ok" if diff <= tol else "failed"
    return f"{verdict}: max |logit difference| {diff:.1e} vs torch, batch {batch} (tolerance {tol:g})"
