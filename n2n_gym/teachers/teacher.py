"""Teachers: pinned in a registry (``n2n_gym.teachers.registry``), loaded from a checkpoint
the user gives, or trained with a documented recipe (resumable, cached).

A teacher is identified by the sha256 of its weights' content (:func:`weights_sha256`),
never by a file's bytes or a name; its accuracies are those of the env's own data splits
(measured, unless this very content was measured on this very data before). A teacher
with non-finite weights or at chance level is refused (:func:`check_teacher`).

A checkpoint is a ``torch.save`` dict with ``format="n2n-gym-teacher"``, the architecture
(IR JSON), the ``state_dict``, the accuracies and the digest of the data it was trained
and measured on. A plain ``state_dict`` of the zoo network is accepted too. Cached
teachers carry a JSON sidecar with the file's sha256, checked on every load. Training
on first use first estimates its duration here and stops with the ways out when that is
over the limit (:func:`max_train_seconds`, default 30 minutes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import pathlib
import re
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from n2n_gym.data.datasets import Dataset, augment_batch, load_dataset, make_normalizer
from n2n_gym.ir.arch import Architecture
from n2n_gym.ir.build import Network, build
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers import registry as teacher_registry
from n2n_gym.teachers.catalog import ENVS
from n2n_gym.teachers.training import accuracy, train_epoch
from n2n_gym.utils.files import (
    atomic_torch_save,
    atomic_write_text,
    cache_dir_choice,
    cache_key,
    default_cache_dir,
    file_sha256,
)

FORMAT = "n2n-gym-teacher"
DEFAULT_MAX_TRAIN_MINUTES = 30.0


class TeacherCheckpointError(RuntimeError):
    """A teacher checkpoint that is corrupt or does not match the env's teacher."""


class TeacherInvalidError(ValueError):
    """A teacher with non-finite weights, or no better than chance on the validation split."""


class TeacherTrainingTooLong(RuntimeError):
    """Training the teacher here would take longer than allowed; the message gives the
    estimate and the ways out. ``estimate``: the :class:`TrainingEstimate`."""

    def __init__(self, message: str, estimate=None):
        super().__init__(message)
        self.estimate = estimate


@dataclass(frozen=True)
class Recipe:
    """Supervised teacher training: SGD (Nesterov) with a one-cycle schedule, cross-entropy,
    random crop (+ flip where the data allows)."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    label_smoothing: float = 0.0
    # training runs on this many torch threads, whatever the caller's setting: CPU
    # kernels reduce in a thread-count-dependent order, so the weights depend on it
    threads: int = 1


# per data set; the paper-size CIFAR/SVHN recipes are GPU work (about 25 img/s for a
# ResNet-34 on 2 CPU cores)
RECIPES: dict[str, Recipe] = {
    "digits": Recipe(epochs=40, batch_size=64, lr=0.05),
    "mnist": Recipe(epochs=3, batch_size=128, lr=0.05),
    # one-cycle + Nesterov + label smoothing reaches paper-level accuracy in 30 epochs
    "cifar10": Recipe(epochs=30, batch_size=128, lr=0.1, label_smoothing=0.1),
    "cifar100": Recipe(epochs=200, batch_size=128, lr=0.1),
    "svhn": Recipe(epochs=40, batch_size=128, lr=0.05),
    "npz": Recipe(epochs=30, batch_size=128, lr=0.05),
}


def default_recipe(dataset_name: str) -> Recipe:
    return RECIPES["npz" if dataset_name.startswith("npz:") else dataset_name]


@dataclass
class Teacher:
    name: str
    architecture: Architecture
    module: Network
    val_accuracy: float  # measured on this env's validation split (Ra's denominator)
    test_accuracy: float
    sha256: str  # of the weights' content (weights_sha256): identifies the teacher in every key
    data_variant: str
    path: str
    data_digest: str = ""  # Dataset.digest of the data the accuracies were measured on
    pin: str | None = None  # the registry id, if these weights are a pinned teacher
    source: str = ""  # "checkpoint", "pinned", "cache" or "trained"

    @property
    def params(self) -> int:
        return self.architecture.params

    def summary(self) -> dict:
        """The teacher as a shareable record: identified by ``sha256``; ``path`` as
        :func:`portable_path` writes it (no machine's folders for a pinned or cached teacher)."""
        return {"name": self.name, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "params": self.params, "flops": self.architecture.flops, "sha256": self.sha256,
                "data_variant": self.data_variant, "data_digest": self.data_digest, "pin": self.pin,
                "source": self.source, "path": portable_path(self.path)}


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as it may be written into a file shared beyond this machine: inside the installed
    package, relative to it (``n2n_gym/teachers/pinned/...``); inside the cache folder, from the
    variable that chose it (``$N2N_CACHE/...``, ``$XDG_CACHE_HOME/n2n_gym/...`` or
    ``~/.cache/n2n_gym/...``); any other path (the user's own checkpoint) unchanged."""
    p = pathlib.Path(path)
    package = pathlib.Path(__file__).resolve().parents[1]
    cache, _, written = cache_dir_choice()
    # the cache first: a cache inside a source checkout is still the cache
    for root, prefix in ((cache, f"{written}/"), (package, f"{package.name}/")):
        try:
            return prefix + p.resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            continue
    return str(path)


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    """One process trains a given teacher; the others wait and then load it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # "a": never truncates another process's lock file
    except OSError as exc:
        if path.with_suffix(".pt").is_file():  # a read-only cache that holds the teacher: nothing to write
            yield
            return
        raise OSError(exc.errno, f"cannot create the teacher lock file {path} ({exc.strerror}): the teacher cache "
                                 f"is not writable; point N2N_CACHE at a writable folder") from exc
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------ identity by content


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over the tensors of a ``state_dict``: names in sorted order, dtype, shape
    and raw bytes (native little-endian). Identifies weights by content: two files written
    by different torch versions or pickle protocols with the same tensors get one digest."""
    h = hashlib.sha256(b"n2n-gym weights v1\0")
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_teacher(module: torch.nn.Module, val_accuracy: float, data: Dataset, where: str) -> None:
    """Refuse a teacher with non-finite weights or no better than chance on ``data``'s
    validation split (chance: the share of its most frequent class, what a constant
    prediction scores). Raises :class:`TeacherInvalidError`."""
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TeacherInvalidError(
            f"the teacher {where} has non-finite weights ({', '.join(bad[:3])}{'…' if len(bad) > 3 else ''}): its "
            "training diverged; train it again with a smaller lr (teacher_recipe={'lr': ...}) or pass another "
            "teacher_checkpoint")
    y = data.split("val")[1]
    chance = float(torch.bincount(y.cpu()).max()) / len(y) if len(y) else 0.0
    # half an image of slack: accuracies are float32 means (0.1 in float32 is above 0.1)
    if not math.isfinite(val_accuracy) or val_accuracy <= chance + 0.5 / max(len(y), 1):
        raise TeacherInvalidError(
            f"the teacher {where} scores {val_accuracy:.4f} on the validation split of {data.variant}, "
            f"no better than chance ({chance:.4f}, always predicting the most frequent class): it was not trained "
            "on this data, or its training failed; pass a teacher_checkpoint trained on this data or a recipe "
            "that trains (teacher_recipe=...)")


def save_teacher(path: str | os.PathLike, module: Network, data: Dataset, recipe: Recipe | None = None,
                 val_accuracy: float | None = None, test_accuracy: float | None = None,
                 extra: dict | None = None) -> str:
    """Write a teacher checkpoint (measuring accuracies if not given), with the data's
    variant and digest it was trained and measured on; returns :func:`weights_sha256`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if val_accuracy is None:
        val_accuracy = accuracy(module, data, *data.split("val"))
    if test_accuracy is None:
        test_accuracy = accuracy(module, data, *data.split("test"))
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    sha = weights_sha256(state)
    meta = {"sha256": sha, "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
            "data_variant": data.variant, "data_digest": data.digest,
            "recipe": dataclasses.asdict(recipe) if recipe else None, "torch": str(torch.__version__), **(extra or {})}
    atomic_torch_save({"format": FORMAT, "version": 2, "architecture": module.arch.to_json(), "state_dict": state,
                       **meta}, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "file_sha256": file_sha256(path)}, indent=1))
    return sha


# ------------------------------------------------------------------ provisioning


def max_train_seconds(minutes: float | None = None) -> float:
    """The longest teacher training allowed without asking: ``minutes`` if given, else
    ``$N2N_TEACHER_MAX_MINUTES``, else 30 minutes (``inf`` allows any)."""
    if minutes is None:
        raw = os.environ.get("N2N_TEACHER_MAX_MINUTES", "")
        try:
            minutes = float(raw) if raw else DEFAULT_MAX_TRAIN_MINUTES
        except ValueError:
            raise ValueError(f"N2N_TEACHER_MAX_MINUTES must be a number of minutes (or inf), got {raw!r}") from None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        raise TypeError(f"the teacher training limit must be a number of minutes (or float('inf')), "
                        f"got {type(minutes).__name__} {minutes!r}")
    if not minutes > 0:  # also NaN
        raise ValueError(f"the teacher training limit must be a positive number of minutes (or inf), got {minutes!r}")
    return float(minutes) * 60.0


def load_teacher(
    name: str,
    data: Dataset,
    *,
    checkpoint: str | os.PathLike | None = None,
    recipe: Recipe | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
) -> Teacher:
    """The zoo teacher ``name`` for ``data``, from (in order) ``checkpoint``; the pinned
    teacher of the registry (``n2n_gym.teachers.registry``) for this data and recipe, from
    its search folders or URL, verified by content; the cache; else trained now with
    ``recipe`` (default: the data set's). Training first estimates its duration on this
    device and raises :class:`TeacherTrainingTooLong` if over ``max_minutes`` (see
    :func:`max_train_seconds`). The teacher is checked (:func:`check_teacher`): its
    accuracies are measured on ``data``'s splits unless this very content was measured
    on this very data before (pin or our own cache file).

    Raises TeacherCheckpointError (unreadable, corrupt, other architecture),
    TeacherInvalidError (non-finite, chance level), TeacherTrainingTooLong.
    """

    arch = teacher_architecture(name, data.info.input_shape, data.info.num_classes)
    if checkpoint is not None:
        with torch.random.fork_rng():
            t = load_checkpoint(name, arch, pathlib.Path(checkpoint), data, device, verify_sidecar=False)
        t.source = "checkpoint"
        return t
    recipe = recipe or default_recipe(data.info.name)
    pin = teacher_registry.find(name, data.digest, dataclasses.asdict(recipe))
    if pin is not None:
        t = _load_pinned(pin, arch, data, device)
        if t is not None:
            return t
    path = teacher_cache_path(arch, data, recipe, device, cache_dir)
    with _file_lock(path.with_suffix(".lock")), torch.random.fork_rng():  # leave the caller's RNG alone
        source = "cache"
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            limit = max_train_seconds(max_minutes)
            if math.isfinite(limit):
                est = estimate_training_seconds(arch, data, recipe, device, done_epochs=_partial_epochs(partial))
                if est.seconds > limit:
                    raise TeacherTrainingTooLong(_too_long_message(name, data, recipe, device, est, limit), est)
            train_teacher(arch, data, recipe, path, device, progress)
            source = "trained"
        t = load_checkpoint(name, arch, path, data, device, verify_sidecar=True)
    t.source = source
    if pin is not None and t.sha256 == pin.sha256:
        t.pin = pin.id
    elif pin is not None:
        warnings.warn(
            f"the {name} teacher trained here by the pinned recipe has weights sha256 {t.sha256[:12]}…, not the "
            f"pinned {pin.id} ({pin.sha256[:12]}…; another CPU, GPU or torch version computes differently): "
            f"records made with the pinned teacher will not validate; get the pinned file ({pin.file}) into "
            "$N2N_TEACHERS to use it", stacklevel=2)
    return t


def teacher_cache_path(arch: Architecture, data: Dataset, recipe: Recipe, device="cpu",
                       cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the teacher trained by ``recipe`` on ``data`` is cached. The key holds every
    setting that changes the weights: architecture, data content (digest, with the split),
    the whole recipe (thread count included) and the device type."""
    key = cache_key(arch=arch.canonical_hash(), data=data.digest, recipe=dataclasses.asdict(recipe),
                    device=torch.device(device).type)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", data.variant).strip("-")
    return pathlib.Path(cache_dir or default_cache_dir()) / "teachers" / f"{arch.name}-{slug}-{key[:12]}.pt"


def _load_pinned(pin, arch: Architecture, data: Dataset, device) -> Teacher | None:
    """The pinned teacher from the first search folder (or URL) whose file has its
    weights; None if none has (a file that differs is skipped with a warning)."""

    def attempt(path: pathlib.Path) -> Teacher | None:
        # only the pin's weights are taken (checked before anything is measured), so a file that is
        # not the pin, NaN weights included, is skipped and the next candidate is tried
        try:
            t = load_checkpoint(pin.teacher, arch, path, data, device, verify_sidecar=False,
                                 known=(pin.sha256, pin.val_accuracy, pin.test_accuracy), only_known=True)
        except _NotTheKnownWeights as exc:
            warnings.warn(f"skipping {path}: its weights (sha256 {exc.sha256[:12]}…) are not the pinned {pin.id} "
                          f"({pin.sha256[:12]}…){exc.why}", stacklevel=3)
            return None
        except (TeacherCheckpointError, TeacherInvalidError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=3)
            return None
        t.pin, t.source = pin.id, "pinned"
        return t

    for path in teacher_registry.candidates(pin):
        if (t := attempt(path)) is not None:
            return t
    try:
        path = teacher_registry.download(pin)
    except OSError as exc:
        warnings.warn(f"could not download the pinned teacher {pin.id}: {exc}", stacklevel=2)
        path = None
    return attempt(path) if path is not None else None


class _NotTheKnownWeights(TeacherCheckpointError):
    """``load_checkpoint(only_known=True)``: the file's weights are not ``known``'s."""

    def __init__(self, path, sha256: str, why: str = ""):
        super().__init__(f"teacher checkpoint {path}: its weights (sha256 {sha256[:12]}…) are not the expected ones{why}")
        self.sha256, self.why = sha256, why


def load_checkpoint(name, arch: Architecture, path: pathlib.Path, data: Dataset, device, verify_sidecar: bool,
                     known: tuple[str, float, float] | None = None, measure: bool = False,
                     only_known: bool = False) -> Teacher:
    """Load and check a teacher file. Accuracies: ``known`` = (weights sha, val, test)
    when the weights have that sha; the registry's when they are a pinned teacher and
    ``data`` is the pin's data; those of our own cache file (``verify_sidecar``) when it
    records this data's digest; else (and always with ``measure``) measured on ``data``.
    ``only_known``: weights other than ``known``'s raise ``TeacherCheckpointError`` before
    anything is measured (a candidate file of a pinned teacher)."""
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not exist")
    if verify_sidecar:
        side = path.with_suffix(".json")
        try:
            recorded = json.loads(side.read_text()).get("file_sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != file_sha256(path):
            raise TeacherCheckpointError(
                f"cached teacher {path} is corrupt (its sha256 does not match its record {side.name}); "
                "delete it and its .json to retrain")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TeacherCheckpointError(f"teacher checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                                     "it is corrupt or not a torch checkpoint") from exc
    recorded_digest = None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        try:
            stored = Architecture.from_json(ckpt["architecture"])
            state = ckpt["state_dict"]
        except (KeyError, ValueError, TypeError) as exc:
            raise TeacherCheckpointError(f"teacher checkpoint {path} is damaged: {type(exc).__name__}: {exc}") from exc
        if stored.canonical_hash() != arch.canonical_hash():
            raise TeacherCheckpointError(
                f"teacher checkpoint {path} holds a {stored.name or 'different'} network with "
                f"{stored.params:,} parameters, not the env's {name} ({arch.params:,}); "
                "pass a checkpoint of the env's teacher architecture")
        recorded_digest = ckpt.get("data_digest")
        val_acc, test_acc = ckpt.get("val_accuracy"), ckpt.get("test_accuracy")
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, val_acc, test_acc = ckpt, None, None
    else:
        raise TeacherCheckpointError(f"{path} is neither an n2n-gym teacher checkpoint nor a state_dict")
    module = build(arch, device)
    try:
        module.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, AttributeError) as exc:
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not fit the {name} architecture: {exc}") from exc
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    sha = weights_sha256(module.state_dict())
    if only_known and (known is None or known[0] != sha):
        finite = all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())
        raise _NotTheKnownWeights(path, sha, "" if finite else " (it has non-finite weights)")

    pin = teacher_registry.by_sha(sha)
    if pin is not None and (pin.sha256 != sha or pin.data_digest != data.digest):
        pin = None
    if known is None and pin is not None:  # a pinned teacher's own data: measured when it was pinned
        known = (sha, pin.val_accuracy, pin.test_accuracy)
    if measure:
        known, verify_sidecar = None, False
    if known is not None and known[0] == sha:
        val_acc, test_acc = known[1], known[2]
    elif not (verify_sidecar and recorded_digest == data.digest and val_acc is not None and test_acc is not None):
        # measured here: a file's numbers may come from other data (issue 11-B); the check
        # first, so that a chance-level teacher is refused before the test split is scored
        val_acc = accuracy(module, data, *data.split("val"))
        check_teacher(module, float(val_acc), data, f"from {path}")
        test_acc = accuracy(module, data, *data.split("test"))
    check_teacher(module, float(val_acc), data, f"from {path}")
    return Teacher(name, arch, module, float(val_acc), float(test_acc), sha, data.variant, str(path),
                   data_digest=data.digest, pin=pin.id if pin else None)


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainingEstimate:
    """How long training a teacher would take here: ``seconds`` in all (remaining epochs
    plus measuring the accuracies), from ``timed_steps`` timed steps of ``probe_images``
    images each, scaled to the recipe's batches."""

    seconds: float
    seconds_per_step: float
    steps: int
    timed_steps: int
    probe_images: int
    device: str
    threads: int


def estimate_training_seconds(arch: Architecture, data: Dataset | None, recipe: Recipe, device="cpu",
                              done_epochs: int = 0, budget_s: float = 1.0, *, info=None,
                              sizes: tuple[int, int] | None = None,
                              refine_below: float = 10 * 60 * DEFAULT_MAX_TRAIN_MINUTES) -> TrainingEstimate:
    """Time a few training steps of ``arch`` on this device (random images) and extrapolate
    to the whole recipe plus measuring the accuracies. On CPU it first times batches of 8
    images scaled linearly to the recipe's batch size (seconds even for a ResNet-34; it
    overestimates, as larger batches run faster per image); if that estimate is under
    ``refine_below`` seconds, it times whole batches instead. Without ``data``: its
    ``info`` and ``sizes`` = (training images, val + test images)."""

    device = torch.device(device)
    if data is not None:
        info, sizes = data.info, (len(data.train_idx), len(data.val_idx) + len(data.y_test))
    n_train, n_eval = sizes
    normalize = make_normalizer(info)
    steps_per_epoch = n_train // recipe.batch_size if n_train > recipe.batch_size else 1
    steps = max(recipe.epochs - done_epochs, 0) * steps_per_epoch

    def total(per_step: float) -> float:
        # measuring val + test accuracy: a forward pass costs about a third of a training step
        return steps * per_step + n_eval / recipe.batch_size * per_step / 3

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _num_threads(recipe.threads), \
            torch.enable_grad():
        model = build(arch, device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=recipe.momentum, nesterov=True)

        def per_step_seconds(k: int) -> tuple[float, int]:
            x = torch.randint(0, 256, (k, *info.input_shape), dtype=torch.uint8, generator=gen).to(device)
            y = torch.randint(0, info.num_classes, (k,), generator=gen).to(device)

            def step() -> None:
                xb = augment_batch(x, info, gen) if recipe.augment else x  # the real pipeline's work too
                loss = torch.nn.functional.cross_entropy(model(normalize(xb)), y,
                                                         label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            step()  # warm-up: allocations, kernel selection
            timed, start = 0, time.perf_counter()
            while timed < 3 and (timed == 0 or time.perf_counter() - start < budget_s):
                step()
                timed += 1
            return (time.perf_counter() - start) / timed * recipe.batch_size / k, timed

        k = recipe.batch_size if device.type != "cpu" else min(recipe.batch_size, 8)
        per_step, timed = per_step_seconds(k)
        if k < recipe.batch_size and total(per_step) < refine_below:
            k = recipe.batch_size
            per_step, timed = per_step_seconds(k)
    return TrainingEstimate(total(per_step), per_step, steps, timed, k, str(device), recipe.threads)


def format_duration(s: float) -> str:
    """``s`` seconds for people: "45 s", "12 min", "3.5 h", "9 days"."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:,.0f} days"


def _too_long_message(name: str, data: Dataset, recipe: Recipe, device, est: TrainingEstimate, limit: float) -> str:
    env_ids = [e for e, (t, d, _) in ENVS.items() if t == name and d == data.info.name] or ["ENV_ID"]
    return (
        f"the {name} teacher for {data.variant} is not available and training it here would take about "
        f"{format_duration(est.seconds)} (estimated from {est.timed_steps} timed training step(s) of "
        f"{est.probe_images} images on {est.device}, {est.threads} thread(s): {est.seconds_per_step:.2f} s per "
        f"step of {recipe.batch_size} images, {est.steps:,} steps = {recipe.epochs} epochs), over the limit of "
        f"{format_duration(limit)}. Ways out: (1) a GPU: device='cuda'; (2) a trained checkpoint: "
        f"teacher_checkpoint='teacher.pt'; (3) train it beforehand (progress, resumable): "
        f"`n2n-gym teacher train {env_ids[0]} [--device cuda]`, or put its pinned file in $N2N_TEACHERS; "
        f"(4) a shorter recipe: teacher_recipe={{'epochs': N}}; (5) opt in to the wait: "
        f"teacher_max_minutes=float('inf') (or N2N_TEACHER_MAX_MINUTES=inf)")


def _partial_epochs(partial: pathlib.Path) -> int:
    if not partial.exists():
        return 0
    try:
        return int(torch.load(partial, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - unreadable: training starts over
        return 0


def train_teacher(arch: Architecture, data: Dataset, recipe: Recipe, path: str | os.PathLike, device="cpu",
                  progress: bool = True, on_epoch: Callable[[int, float, Network], None] | None = None) -> str:
    """Train ``arch`` on ``data``'s training split by ``recipe`` (SGD Nesterov, one-cycle,
    cross-entropy with label smoothing, the data set's augmentation) on ``recipe.threads``
    torch threads, saving a resumable state (``<path>.partial``) after every epoch; write
    the checkpoint to ``path`` (:func:`save_teacher`) and return its weights' sha256.
    ``on_epoch(epoch, mean loss, model)`` is called after each epoch (the model in train mode)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    x, y = data.split("train")
    steps_per_epoch = len(x) // recipe.batch_size if len(x) > recipe.batch_size else 1
    torch.manual_seed(recipe.seed)
    model = build(arch, device)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = 0
    seconds = 0.0
    if partial.exists():
        try:
            state = torch.load(partial, map_location="cpu", weights_only=True)  # tensors and numbers only
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            start, seconds = state["epoch"], float(state.get("seconds", 0.0))
        except Exception:  # an unreadable partial state is only lost time: start over
            start = 0
    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=start * steps_per_epoch, disable=not progress,
               desc=f"training teacher {arch.name} on {data.variant}", unit="step")
    for epoch in range(start, recipe.epochs):
        t0 = time.perf_counter()
        with _num_threads(recipe.threads):
            loss = train_epoch(model, opt, sched, data, x, y, recipe.batch_size, gen, recipe.augment, progress=bar,
                               label_smoothing=recipe.label_smoothing)
        seconds += time.perf_counter() - t0
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "generator": gen.get_state(), "epoch": epoch + 1, "seconds": seconds}, partial)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss, model)
            model.train()
    bar.close()
    model.eval()
    with _num_threads(recipe.threads):
        sha = save_teacher(path, model, data, recipe, extra={"train_seconds": seconds,
                                                             "trained_on": torch.device(device).type})
    partial.unlink(missing_ok=True)
    return sha


_train = train_teacher  # the name the first long-running training scripts import


def teacher_from_import(imported, data: Dataset, *, name: str = "", device: str | torch.device = "cpu",
                        path: str = "", check: bool = True) -> Teacher:
    """A :class:`Teacher` from an ``n2n_gym.teachers.importer.ImportedModel`` (a user's ``nn.Module`` in
    the IR): built on ``device``, frozen, its accuracies measured on ``data``'s validation and
    test splits. Its ``sha256`` is the content digest of architecture + weights
    (``ImportedModel.sha256``), so cache keys follow the weights, not a file or a name.

    Raises ``ValueError`` if the model's input shape or number of classes is not the data set's,
    and :class:`TeacherInvalidError` (unless ``check`` is off) if it has non-finite weights or is
    no better than chance on the validation split: its rewards would be meaningless (Ra =
    student / teacher accuracy exceeds 1 for any student that beats an untrained teacher).
    """
    arch = imported.architecture
    if arch.input_shape != data.info.input_shape or arch.num_classes != data.info.num_classes:
        raise ValueError(
            f"the imported model takes {arch.input_shape} inputs and gives {arch.num_classes} classes, but the data "
            f"set {data.info.name} has {data.info.input_shape} images in {data.info.num_classes} classes; "
            "import it with an example input of the data set's shape and give it that many outputs")
    module = imported.build(device)
    with torch.random.fork_rng(devices=[]):
        val_acc = accuracy(module, data, *data.split("val"))
        test_acc = accuracy(module, data, *data.split("test"))
    if check:
        try:
            check_teacher(module, val_acc, data, f"imported from {name or arch.name}")
        except TeacherInvalidError as exc:
            raise TeacherInvalidError(f"{exc}; to run a random-weight model anyway (plumbing or timing only: "
                                      "its rewards mean nothing), pass allow_untrained_teacher=True") from None
    return Teacher(name or arch.name, arch, module, float(val_acc), float(test_acc), imported.sha256,
                   data.variant, path, data_digest=data.digest, source="import")


def pin_teacher(env_id: str, checkpoint: str | os.PathLike, *, store: bool = True, recipe: dict | None = None,
                train_seconds: float | None = None, train_conditions: str = "", reproduce: str = "",
                legacy_sha256: tuple[str, ...] = (), legacy_note: str = "", notes: str = "",
                data_root: str | None = None, pin_id: str | None = None,
                registry: pathlib.Path = teacher_registry.REGISTRY_PATH,
                pinned_dir: pathlib.Path = teacher_registry.PINNED_DIR) -> teacher_registry.Pin:
    """Pin the teacher in ``checkpoint`` for the env ``env_id``: measure it on the env's data,
    write it in the canonical format (``store``: into the package's ``pinned/`` folder; else
    into this machine's cache only, others reproduce it by training) and add its entry to
    the registry (``registry``, ``pinned_dir``: the package's by default)."""
    teacher, dataset, old = teacher_registry.env_teacher(env_id)
    data = load_dataset(dataset, data_root)
    arch = teacher_architecture(teacher, data.info.input_shape, data.info.num_classes)
    path = pathlib.Path(checkpoint)
    t = load_checkpoint(teacher, arch, path, data, "cpu", verify_sidecar=False, measure=True)
    if recipe is None:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        recipe = ckpt.get("recipe") if isinstance(ckpt, dict) else None
        if train_seconds is None and isinstance(ckpt, dict):
            train_seconds = ckpt.get("train_seconds")
    if recipe is None:
        raise ValueError(f"{path} does not record its recipe: pass recipe=")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", data.variant.split(" (")[0]).strip("-").lower()
    pid = pin_id or f"{teacher}-{slug}"
    name = f"{pid}-{t.sha256[:12]}.pt"
    # not stored: the canonical file goes to this machine's cache only (found there by the search)
    dest = (pinned_dir if store else default_cache_dir() / "teachers" / "pinned") / name
    sha = save_teacher(dest, t.module, data, Recipe(**recipe), t.val_accuracy, t.test_accuracy,
                       extra={"train_seconds": train_seconds})
    assert sha == t.sha256
    dest.with_suffix(".json").unlink(missing_ok=True)  # the registry is the record
    pin = teacher_registry.Pin(id=pid, teacher=teacher, dataset=dataset, data_variant=data.variant, data_digest=data.digest,
              recipe=dict(recipe), sha256=t.sha256, val_accuracy=t.val_accuracy, test_accuracy=t.test_accuracy,
              params=arch.params, file=name, file_bytes=dest.stat().st_size, stored=store,
              train_seconds=train_seconds, train_conditions=train_conditions,
              reproduce=reproduce or f"n2n-gym teacher train {env_id}",
              legacy_sha256=tuple(legacy_sha256) or (old.legacy_sha256 if old else ()),
              legacy_note=legacy_note or (old.legacy_note if old else ""), notes=notes or (old.notes if old else ""))
    teacher_registry.write_pin(pin, registry)
    return pin
