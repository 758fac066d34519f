"""What a deployer measures: inference latency, peak memory and file size of exported networks.

:func:`measure` runs one exported file (``.onnx`` in ONNX Runtime, ``.pt2`` through
``torch.export.load(...).module()``) in a *fresh Python process* per call, so that its
memory figures are that runtime's alone and no state is shared between the files compared:

- latency: ``repeats`` timed forward passes per batch size after ``warmup`` untimed ones, on
  random float32 inputs of shape (batch, C, H, W); the median and quartiles in milliseconds;
- ``peak_rss_mb``: the process's peak resident memory (``VmHWM``, Linux), imports included;
  ``inference_peak_mb``: how far inference raised it above the resident memory after the
  file was loaded (the activations and the runtime's buffers);
- ``file_mb``: the file's size.

:func:`compare` measures a teacher's and a student's files in alternating processes, round
by round (paired, as the machine's load drifts), and gives the speed-up per runtime and
batch size as the median of the per-round ratios, beside the parameter and FLOP ratios.
Figures depend on the machine and its load: report them with ``threads`` and the load
average (both in the result).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Sequence

RUNTIMES = {".onnx": "onnxruntime", ".pt2": "torch.export"}

_CHILD = r"""
import json, os, sys, time
path, runtime, shape, batches, warmup, repeats, threads = json.loads(sys.argv[1])
import numpy as np
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
if runtime == "onnxruntime":
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda x: session.run(None, {name: x})
    make = lambda b: np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32)
else:
    import torch
    torch.set_num_threads(threads)
    module = torch.export.load(path).module()
    def run(x):
        with torch.inference_mode():
            return module(x)
    make = lambda b: torch.from_numpy(np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32))
loaded = rss_mb()
out = {"loaded_rss_mb": loaded, "latency_ms": {}}
for b in batches:
    x = make(b)
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1000)
    out["latency_ms"][str(b)] = times
with open("/proc/self/status") as f:  # VmHWM: this image's peak (ru_maxrss would carry the parent's across exec)
    out["peak_rss_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps(out))
"""


def runtime_of(path: str | os.PathLike) -> str:
    """``"onnxruntime"`` for ``.onnx``, ``"torch.export"`` for ``.pt2``; ``ValueError`` otherwise."""
    suffix = pathlib.Path(path).suffix
    if suffix not in RUNTIMES:
        raise ValueError(f"{path}: cannot measure a {suffix or 'suffix-less'} file; give an exported .onnx or .pt2 "
                         f"(n2n-gym compress writes both)")
    return RUNTIMES[suffix]


def _quartiles(values: Sequence[float]) -> dict:
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": med, "q1": q1, "q3": q3, "n": len(values)}


def measure(path: str | os.PathLike, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 256), *,
            repeats: int = 30, warmup: int = 3, threads: int = 1, timeout: float = 600.0) -> dict:
    """Latency (ms per forward pass), peak memory (MiB) and size of one exported file, in a
    fresh process. ``input_shape``: (C, H, W). Raises ``FileNotFoundError`` for a missing file,
    ``ValueError`` for an unknown suffix or bad sizes, ``RuntimeError`` (with the child's
    error) when the runtime cannot run the file."""
    path = pathlib.Path(path)
    runtime = runtime_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported network at {path}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes) or repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"batch sizes, repeats and threads must be >= 1 (warmup >= 0); got {list(batch_sizes)}, "
                         f"{repeats}, {threads}, {warmup}")
    args = json.dumps([str(path), runtime, [int(s) for s in input_shape], [int(b) for b in batch_sizes], warmup,
                       repeats, threads])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{runtime} could not run {path}: {proc.stderr.strip().splitlines()[-1:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"path": str(path), "runtime": runtime, "threads": threads, "file_mb": path.stat().st_size / 2**20,
            "peak_rss_mb": raw["peak_rss_mb"], "inference_peak_mb": max(raw["peak_rss_mb"] - raw["loaded_rss_mb"], 0.0),
            "latency_ms": {b: _quartiles(t) for b, t in raw["latency_ms"].items()},
            "raw_latency_ms": raw["latency_ms"]}


def compare(teacher: dict[str, str], student: dict[str, str], input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 256), *, rounds: int = 3, repeats: int = 30, threads: int = 1,
            teacher_params: int | None = None, student_params: int | None = None, teacher_flops: int | None = None,
            student_flops: int | None = None) -> dict:
    """Teacher against student, per runtime: ``teacher`` and ``student`` map a runtime
    (``"onnxruntime"``, ``"torch.export"``) to a file. Each of ``rounds`` rounds measures the
    teacher's file then the student's (alternating which goes first) in fresh processes;
    ``speedup[runtime][batch]`` is the median over rounds of teacher median / student median,
    ``speedup_rounds[runtime][batch]`` each round's."""
    common = sorted(set(teacher) & set(student))
    if not common:
        raise ValueError(f"no runtime with both files: teacher has {sorted(teacher)}, student {sorted(student)}")
    out: dict = {"threads": threads, "rounds": rounds, "repeats": repeats, "batch_sizes": list(batch_sizes),
                 "loadavg": list(os.getloadavg()), "runtimes": {}}
    for runtime in common:
        runs: dict[str, list[dict]] = {"teacher": [], "student": []}
        for r in range(rounds):
            order = ("teacher", "student") if r % 2 == 0 else ("student", "teacher")
            for who in order:
                path = teacher[runtime] if who == "teacher" else student[runtime]
                runs[who].append(measure(path, input_shape, batch_sizes, repeats=repeats, threads=threads))
        res: dict = {}
        for who in ("teacher", "student"):
            last = runs[who][-1]
            res[who] = {"file_mb": last["file_mb"], "peak_rss_mb": max(m["peak_rss_mb"] for m in runs[who]),
                        "inference_peak_mb": max(m["inference_peak_mb"] for m in runs[who]),
                        "latency_ms": {str(b): statistics.median(m["latency_ms"][str(b)]["median"] for m in runs[who])
                                       for b in batch_sizes}}
        # each round's ratio, kept: the median alone hid how far rounds on a shared machine disagree
        res["speedup_rounds"] = {str(b): [t["latency_ms"][str(b)]["median"] / s["latency_ms"][str(b)]["median"]
                                          for t, s in zip(runs["teacher"], runs["student"])] for b in batch_sizes}
        res["speedup"] = {b: statistics.median(v) for b, v in res["speedup_rounds"].items()}
        out["runtimes"][runtime] = res
    if teacher_params and student_params:
        out["params_ratio"] = teacher_params / student_params
    if teacher_flops and student_flops:
        out["flops_ratio"] = teacher_flops / student_flops
    return out


def speedup_range(runtime_result: dict, batch) -> str:
    """`` (lo-hi)``: the range of a runtime's per-round speed-ups at ``batch``, or '' with one
    round or for a result made before they were kept."""
    v = (runtime_result.get("speedup_rounds") or {}).get(str(batch)) or []
    return f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else ""


def table(result: dict) -> str:
    """A Markdown table of :func:`compare`'s result: one row per runtime and batch size. Memory
    is the inference peak (how far running the file raised the process's resident memory above
    what loading it took): the process's whole peak is dominated by the runtime's imports
    (about 0.8 GiB for torch), which a teacher and its student share."""
    rows = ["| runtime | batch | teacher ms | student ms | speed-up | teacher / student inference MiB | file MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for runtime, r in result["runtimes"].items():
        for b in result["batch_sizes"]:
            t, s = r["teacher"], r["student"]
            rows.append(f"| {runtime} | {b} | {t['latency_ms'][str(b)]:.2f} | {s['latency_ms'][str(b)]:.2f} | "
                        f"{r['speedup'][str(b)]:.2f}x{speedup_range(r, b)} | "
                        f"{t['inference_peak_mb']:.0f} / {s['inference_peak_mb']:.0f} | "
                        f"{t['file_mb']:.2f} / {s['file_mb']:.2f} |")
    ratios = [f"{k.split('_')[0]} ratio {result[k]:.2f}x" for k in ("params_ratio", "flops_ratio") if k in result]
    foot = f"\n{', '.join(ratios)}; " if ratios else "\n"
    return "\n".join(rows) + foot + (f"{result['threads']} thread(s), median of {result['rounds']} paired rounds of "
                                     f"{result['repeats']} passes; load average {result['loadavg'][0]:.1f}")
