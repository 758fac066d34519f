"""The ResNet-20 teacher and the compressed students on GENUINE CIFAR-10 pixels.

Everything of ``N2N-ResNet20-CIFAR10-v1`` (the pinned teacher, the search, the final distillations,
the README's test accuracies) was trained and measured on the JPEG-derived CIFAR-10 arrays
(``$N2N_DATA/cifar10/``: every image decoded from a quality-75 JPEG export). The only genuine
CIFAR-10 pixels here are a small subset (``$N2N_DATA/cifar10-subset.npz``): the first 1,017 images
of the official ``test_batch``, byte for byte, so official test indices 0..1016 (not a random or
class-balanced sample). This script scores the teacher and each committed compress run's student
on those 1,017 genuine images and on their JPEG-derived copies (the same 1,017 images of the
JPEG-derived test split, in the official order as the library loads it):

- **correspondence**, checked before anything is scored (a failure stops the script): the labels
  of the genuine images and of their JPEG-derived copies are equal, the mean absolute pixel
  difference is a few grey levels (JPEG error, not another image), and the nearest JPEG-derived
  image (squared error, among the 1,017) of each genuine image is its own copy;
- **models**: the pinned teacher as the env loads it (its torch module, the data set's
  normalization as the library applies it) and the searched ``student.onnx`` of every run folder
  ``benchmarks/results/compress-resnet20-v1*/`` in ONNX Runtime (one thread), normalized as its
  ``student.json`` says. The pipeline is validated first on the whole JPEG-derived test split
  (10,000): it must reproduce the teacher's test accuracy the library reports and each run's
  ``report.json`` ``final.test_accuracy`` to within 0.05 points, else the script fails;
- **statistics**, per model and pixel variant: per-image correctness and accuracy; per student
  the paired difference teacher - student with a paired bootstrap percentile interval
  (``--reps`` resamples of the images, fixed ``--seed``) and the exact McNemar test (two-sided
  binomial test on the discordant images); per model the same for genuine - JPEG-derived (what
  the genuine pixels change), and per student whether the gap widens on the genuine pixels (the
  per-image gap on genuine minus that on the JPEG-derived copies, bootstrapped the same way); and
  the gap on the whole JPEG-derived test split (10,000) with its interval and p, for reference.
  The intervals are over test images only: each student is one training seed.

The result (data files' sha256, the teacher's identity, each student's run folder and the sha256
of its student.onnx, per-image correctness as 0/1 lists, the summary) is written atomically to
``--out``; ``benchmarks/results/genuine_cifar10/resnet20.json`` is the committed one, rendered
into the README and docs/results/genuine-cifar10.md by ``docs/gen_pages.py``. Deterministic: a rerun changes only the timing fields.

    python -m n2n_gym.benchmarks.genuine_cifar10      # ~1 min on one core
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import time

import numpy as np

from n2n_gym.utils.checks import int_at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
RUNS = "compress-resnet20-v1*"
OUT = RESULTS / "genuine_cifar10" / "resnet20.json"
SUBSET = "cifar10-subset.npz"
JPEG_TEST = "cifar10/cifar10-test.npz"
#: how far a pipeline may be from the accuracy the library or the run reported (a fraction: 0.05 points)
REPRODUCE_TOL = 0.0005
#: the JPEG-derived copy of an image differs from it by JPEG error: a few grey levels (0..255)
MIN_MEAN_MAE, MAX_MEAN_MAE, MAX_IMAGE_MAE = 0.5, 10.0, 20.0


class CorrespondenceError(ValueError):
    """The genuine images and the rows taken as their JPEG-derived copies are not the same images."""


class ReproductionError(RuntimeError):
    """The pipeline does not reproduce an accuracy the library or a run reported."""


# ---------------------------------------------------------------------------- statistics


def check_correspondence(x_genuine: np.ndarray, y_genuine: np.ndarray, x_jpeg: np.ndarray, y_jpeg: np.ndarray,
                         *, min_mean_mae: float = MIN_MEAN_MAE, max_mean_mae: float = MAX_MEAN_MAE,
                         max_image_mae: float = MAX_IMAGE_MAE) -> dict:
    """That row ``i`` of ``x_jpeg`` is the JPEG-derived copy of genuine image ``i`` (uint8 images,
    any common layout with the image first): equal labels, a mean absolute difference (0..255) in
    ``[min_mean_mae, max_mean_mae]`` over the images and at most ``max_image_mae`` for each, and
    every genuine image's nearest image of ``x_jpeg`` (squared error) its own copy. Raises
    :class:`CorrespondenceError` naming what fails; returns the per-image error's statistics."""
    if x_genuine.shape != x_jpeg.shape or x_genuine.dtype != np.uint8 or x_jpeg.dtype != np.uint8:
        raise CorrespondenceError(f"images differ in shape or dtype: genuine {x_genuine.shape} {x_genuine.dtype}, "
                                  f"JPEG-derived {x_jpeg.shape} {x_jpeg.dtype} (both must be uint8, same shape)")
    if y_genuine.shape != y_jpeg.shape or len(y_genuine) != len(x_genuine):
        raise CorrespondenceError(f"{len(y_genuine)} genuine labels, {len(y_jpeg)} JPEG-derived labels, "
                                  f"{len(x_genuine)} images")
    wrong = np.flatnonzero(y_genuine != y_jpeg)
    if len(wrong):
        raise CorrespondenceError(f"labels differ at {len(wrong)} of {len(y_genuine)} images (first at {wrong[:5]}): "
                                  "the JPEG-derived rows are not the genuine images' copies")
    g = x_genuine.reshape(len(x_genuine), -1).astype(np.float64)
    j = x_jpeg.reshape(len(x_jpeg), -1).astype(np.float64)
    mae = np.abs(g - j).mean(1)
    if not min_mean_mae <= mae.mean() <= max_mean_mae or mae.max() > max_image_mae:
        raise CorrespondenceError(
            f"mean absolute pixel difference {mae.mean():.2f} grey levels (max {mae.max():.2f} for one image): a JPEG "
            f"copy of the same image differs by {min_mean_mae:g} to {max_mean_mae:g} on average and by at most "
            f"{max_image_mae:g} per image" + (" (identical pixels: these are not the JPEG-derived copies)"
                                              if mae.max() == 0 else ""))
    # squared distance of every genuine image to every JPEG-derived one: |g|^2 + |j|^2 - 2 g.j
    dist = (g * g).sum(1)[:, None] + (j * j).sum(1)[None, :] - 2 * g @ j.T
    nearest = dist.argmin(1)
    astray = np.flatnonzero(nearest != np.arange(len(g)))
    if len(astray):
        raise CorrespondenceError(f"{len(astray)} genuine images (first at {astray[:5]}) are nearer another "
                                  "JPEG-derived image than their own copy")
    return {"images": len(g), "labels_equal": True, "nearest_is_own_copy": True,
            "mae_mean": float(mae.mean()), "mae_min": float(mae.min()), "mae_max": float(mae.max())}


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair coin flips: twice the smaller tail, at most 1."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(m + 1)) / 2**n)  # exact integers, one rounding


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers scored on the same images: ``first_only`` images only
    the first gets right, ``second_only`` only the second; p is the two-sided binomial test of
    ``first_only`` in ``first_only + second_only`` flips of a fair coin."""
    a, b = _paired(first_correct, second_correct)
    first_only, second_only = int((a & ~b).sum()), int((~a & b).sum())
    return {"first_only": first_only, "second_only": second_only,
            "p": binomial_two_sided_p(first_only, first_only + second_only)}


def paired_bootstrap(first_correct: np.ndarray, second_correct: np.ndarray, reps: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Accuracy difference first - second on the same images, with the percentile interval of a
    paired bootstrap: ``reps`` resamples of the images (with replacement, both classifiers on the
    same resample), ``numpy.random.default_rng(seed)``. Fractions, not points."""
    a, b = _paired(first_correct, second_correct)
    return bootstrap_mean(a.astype(np.float64) - b, reps, seed, level)


def bootstrap_mean(d: np.ndarray, reps: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean of the per-image values ``d`` with the percentile interval of ``reps`` bootstrap
    resamples of the images, ``numpy.random.default_rng(seed)`` (:func:`paired_bootstrap` on
    per-image differences)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0 or reps < 1:
        raise ValueError(f"a non-empty 1-d array and reps >= 1 needed, got shape {d.shape} and reps {reps}")
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), (min(1000, reps - i), len(d)))].mean(1)
                            for i in range(0, reps, 1000)])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(d.mean()), "low": float(low), "high": float(high), "reps": reps, "seed": seed,
            "level": level}


def _paired(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"two non-empty 1-d correctness arrays of the same images needed, got {a.shape} and {b.shape}")
    return a, b


# ---------------------------------------------------------------------------- models


def onnx_correct(path: pathlib.Path, normalization: dict, x: np.ndarray, y: np.ndarray, batch: int = 500) -> np.ndarray:
    """Per-image correctness of an exported student in ONNX Runtime (one thread) on uint8 NCHW
    images, normalized as its student.json's ``normalization`` says (``(x / 255 - mean) / std``)."""
    import onnxruntime as ort

    if normalization.get("scale") != "x / 255":
        raise ValueError(f"{path}: normalization scale {normalization.get('scale')!r}, expected 'x / 255'")
    mean = np.asarray(normalization["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], np.float32).reshape(1, -1, 1, 1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pred = np.concatenate([session.run(None, {name: (x[i:i + batch].astype(np.float32) / 255 - mean) / std})[0]
                           .argmax(1) for i in range(0, len(x), batch)])
    return pred == y


def teacher_correct(teacher, data, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image correctness of the env's teacher (its torch module, the data set's normalization)."""
    import torch

    from n2n_gym.teachers.training import predict_logits

    return predict_logits(teacher.module, data, torch.from_numpy(x)).argmax(1).numpy() == y


def check_reproduced(what: str, measured: float, reported: float, tol: float = REPRODUCE_TOL) -> None:
    if abs(measured - reported) > tol:
        raise ReproductionError(f"{what}: {100 * measured:.2f} % here on the JPEG-derived test split, "
                                f"{100 * reported:.2f} % reported (tolerance {100 * tol:.2f} points): the "
                                "preprocessing or the model is not the one the accuracy was measured with")


def compare(teacher: np.ndarray, student: np.ndarray, reps: int, seed: int) -> dict:
    """Teacher - student on one pixel variant: the student's accuracy, the paired difference with
    its bootstrap interval, and McNemar (``first_only``: images only the teacher gets right)."""
    return {"accuracy": float(student.mean()), "teacher_minus_student": paired_bootstrap(teacher, student, reps, seed),
            "mcnemar": mcnemar_exact(teacher, student)}


def shift(genuine: np.ndarray, jpeg: np.ndarray, reps: int, seed: int) -> dict:
    """What the genuine pixels change for one model: accuracy genuine - JPEG-derived on the same
    images, its bootstrap interval and McNemar (``first_only``: right only on the genuine pixels)."""
    return {"difference": paired_bootstrap(genuine, jpeg, reps, seed), "mcnemar": mcnemar_exact(genuine, jpeg)}


def _points(b: dict) -> str:
    return f"{100 * b['difference']:+.2f} [{100 * b['low']:+.2f}, {100 * b['high']:+.2f}]"


def _relative(path: pathlib.Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _compact(text: str) -> str:
    """JSON written with indent, its lists of numbers on one line each (the 0/1 arrays)."""
    number_list = re.compile(r"\[\n\s*(-?[\d.e+-]+(?:,\n\s*-?[\d.e+-]+)*)\n\s*\]")
    return number_list.sub(lambda m: "[" + ", ".join(s.strip() for s in m.group(1).split(",")) + "]", text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="N2N-ResNet20-CIFAR10-v1")
    p.add_argument("--runs", nargs="*", default=None,
                   help=f"compress run folders (default: benchmarks/results/{RUNS}/ with a student.onnx)")
    p.add_argument("--reps", type=int_at_least(100), default=10_000, help="paired bootstrap resamples")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="the bootstrap's seed")
    p.add_argument("--out", default=str(OUT), help=f"result JSON (default: the committed {_relative(OUT)})")
    a = p.parse_args(argv)

    import gymnasium as gym
    import onnxruntime
    import torch

    import n2n_gym  # noqa: F401
    from n2n_gym.data.datasets import data_root
    from n2n_gym.utils.files import atomic_write_text, file_sha256

    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = ([pathlib.Path(r) for r in a.runs] if a.runs is not None
            else sorted(d for d in RESULTS.glob(RUNS) if (d / "student.onnx").is_file()))
    if not runs:
        p.error(f"no run folder with a student.onnx in {_relative(RESULTS)}/{RUNS}")
    root = data_root()
    subset_path, jpeg_path = root / SUBSET, root / JPEG_TEST
    with np.load(subset_path) as z:
        x_gen, y_gen = z["x_test"], z["y_test"]  # NHWC uint8: official test_batch images 0..n-1
    n = len(x_gen)

    env = gym.make(a.env, progress=False)
    teacher, data = env.unwrapped.teacher, env.unwrapped.evaluator.data
    # the library's JPEG-derived test split is in the official order (rows sorted by official_index)
    x_test, y_test = data.x_test.numpy(), data.y_test.numpy()
    x_copy, y_copy = x_test[:n], y_test[:n]
    corr = check_correspondence(x_gen, y_gen, x_copy.transpose(0, 2, 3, 1), y_copy)
    print(f"{n} genuine test images and their JPEG-derived copies correspond: labels equal, nearest copy its own, "
          f"mean absolute difference {corr['mae_mean']:.2f} grey levels (max {corr['mae_max']:.2f})", flush=True)
    variants = {"genuine": np.ascontiguousarray(x_gen.transpose(0, 3, 1, 2)), "jpeg": x_copy}

    full_correct = teacher_correct(teacher, data, x_test, y_test)
    full = full_correct.mean()
    check_reproduced(f"teacher {teacher.sha256[:12]}", full, teacher.test_accuracy)
    correct = {"teacher": {v: teacher_correct(teacher, data, x, y_gen) for v, x in variants.items()}}
    print(f"teacher: JPEG test (10,000) {100 * full:.2f} % (library: {100 * teacher.test_accuracy:.2f} %); "
          + ", ".join(f"{v} {100 * c.mean():.2f} %" for v, c in correct["teacher"].items()), flush=True)
    students = []
    for run in runs:
        spec = json.loads((run / "student.json").read_text())
        report = json.loads((run / "report.json").read_text())
        onnx, norm = run / "student.onnx", spec["normalization"]
        s_full_correct = onnx_correct(onnx, norm, x_test, y_test)
        s_full = s_full_correct.mean()
        check_reproduced(f"{_relative(run)}/student.onnx", s_full, report["final"]["test_accuracy"])
        if spec["teacher"]["sha256"] != teacher.sha256:
            raise ReproductionError(f"{_relative(run)} was distilled from teacher {spec['teacher']['sha256'][:12]}, "
                                    f"the env's is {teacher.sha256[:12]}")
        correct[run.name] = {v: onnx_correct(onnx, norm, x, y_gen) for v, x in variants.items()}
        row = {"name": run.name, "run_folder": _relative(run), "onnx_sha256": file_sha256(onnx),
               "normalization": norm, "params": spec["params"], "final_epochs": report["final_epochs"],
               "final_recipe": report.get("final_recipe", "n2n"), "val_accuracy": report["final"]["val_accuracy"],
               "jpeg_test_full": {**compare(full_correct, s_full_correct, a.reps, a.seed),
                                  "reported": report["final"]["test_accuracy"]},
               **{v: compare(correct["teacher"][v], correct[run.name][v], a.reps, a.seed) for v in variants}}
        # does the gap widen on genuine pixels? (teacher - student) genuine - (teacher - student) JPEG, per image
        gap = {v: correct["teacher"][v].astype(np.float64) - correct[run.name][v] for v in variants}
        row["gap_genuine_minus_jpeg"] = bootstrap_mean(gap["genuine"] - gap["jpeg"], a.reps, a.seed)
        row["genuine_minus_jpeg"] = shift(correct[run.name]["genuine"], correct[run.name]["jpeg"], a.reps, a.seed)
        students.append(row)
        print(f"{run.name}: " + "; ".join(
            f"{v} {100 * row[k]['accuracy']:.2f} %, teacher - student {_points(row[k]['teacher_minus_student'])}, "
            f"McNemar p {row[k]['mcnemar']['p']:.3g}"
            for k, v in [("jpeg_test_full", f"JPEG test (10,000; report {100 * row['jpeg_test_full']['reported']:.2f} "
                                             "%)"), ("genuine", "genuine"), ("jpeg", "JPEG copies")])
            + f"; gap genuine - gap JPEG {_points(row['gap_genuine_minus_jpeg'])}", flush=True)
    env.close()

    result = {
        "benchmark": "genuine_cifar10", "env": a.env,
        "data": {"genuine": {"file": SUBSET, "sha256": file_sha256(subset_path), "arrays": "x_test, y_test",
                             "images": n, "official_test_indices": [0, n - 1],
                             "class_counts": np.bincount(y_gen, minlength=10).tolist()},
                 "jpeg": {"file": JPEG_TEST, "sha256": file_sha256(jpeg_path),
                          "rows": f"the first {n} of the test split in the official order (official_index)",
                          "dataset_variant": data.variant, "dataset_digest": data.digest},
                 "correspondence": corr},
        "teacher": {**teacher.summary(), "jpeg_test_full": {"accuracy": float(full),
                                                            "reported": teacher.test_accuracy},
                    **{v: {"accuracy": float(c.mean())} for v, c in correct["teacher"].items()},
                    "genuine_minus_jpeg": shift(correct["teacher"]["genuine"], correct["teacher"]["jpeg"], a.reps,
                                                a.seed)},
        "students": students,
        "bootstrap": {"reps": a.reps, "seed": a.seed, "level": 0.95, "kind": "paired, percentile"},
        "correct": {m: {v: c.astype(int).tolist() for v, c in per.items()} for m, per in correct.items()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "seconds": time.perf_counter() - start, "load": os.getloadavg()[0],
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, _compact(json.dumps(result, indent=1)) + "\n")
    print(f"{time.perf_counter() - start:.0f} s; result: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
