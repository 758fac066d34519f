"""Teachers: trained on first use with a documented recipe (resumable, cached with their
accuracies and a sha256), or loaded from a checkpoint the user gives.

A checkpoint is a ``torch.save`` dict with ``format="n2n-gym-teacher"``, the architecture
(IR JSON), the ``state_dict`` and the accuracies. A plain ``state_dict`` of the zoo
network is accepted too (accuracies are then measured). Cached teachers carry a JSON
sidecar with the file's sha256, checked on every load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .arch import Architecture
from .build import Network, build
from .cache import cache_key, default_cache_dir
from .data import Dataset
from .distill import accuracy, train_epoch
from .files import atomic_torch_save, atomic_write_text, file_sha256
from .zoo import teacher_architecture

FORMAT = "n2n-gym-teacher"


class TeacherCheckpointError(RuntimeError):
    """A teacher checkpoint that is corrupt or does not match the env's teacher."""


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
    val_accuracy: float
    test_accuracy: float
    sha256: str  # of the checkpoint file: identifies the teacher in every cache key
    data_variant: str
    path: str

    @property
    def params(self) -> int:
        return self.architecture.params

    def summary(self) -> dict:
        return {"name": self.name, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "params": self.params, "flops": self.architecture.flops, "sha256": self.sha256,
                "data_variant": self.data_variant, "path": self.path}


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


def save_teacher(path: str | os.PathLike, module: Network, data: Dataset, recipe: Recipe | None = None,
                 val_accuracy: float | None = None, test_accuracy: float | None = None) -> str:
    """Write a teacher checkpoint (measuring accuracies if not given); returns its sha256."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if val_accuracy is None:
        val_accuracy = accuracy(module, data, *data.split("val"))
    if test_accuracy is None:
        test_accuracy = accuracy(module, data, *data.split("test"))
    atomic_torch_save({
        "format": FORMAT, "version": 1, "architecture": module.arch.to_json(),
        "state_dict": {k: v.cpu() for k, v in module.state_dict().items()},
        "val_accuracy": val_accuracy, "test_accuracy": test_accuracy, "data_variant": data.variant,
        "recipe": dataclasses.asdict(recipe) if recipe else None,
    }, path)
    sha = file_sha256(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(
        {"sha256": sha, "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
         "data_variant": data.variant, "recipe": dataclasses.asdict(recipe) if recipe else None}, indent=1))
    return sha


def load_teacher(
    name: str,
    data: Dataset,
    *,
    checkpoint: str | os.PathLike | None = None,
    recipe: Recipe | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Teacher:
    """The zoo teacher ``name`` for ``data``: from ``checkpoint`` if given, else from the
    cache, else trained now with ``recipe`` (default: the data set's)."""
    arch = teacher_architecture(name, data.info.input_shape, data.info.num_classes)
    if checkpoint is not None:
        with torch.random.fork_rng():
            return _load_checkpoint(name, arch, pathlib.Path(checkpoint), data, device, verify_sidecar=False)
    recipe = recipe or default_recipe(data.info.name)
    key = cache_key(arch=arch.canonical_hash(), data=data.variant, recipe=dataclasses.asdict(recipe),
                    val=len(data.val_idx), split=data.val_idx[:16].tolist())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", data.variant).strip("-")
    path = pathlib.Path(cache_dir or default_cache_dir()) / "teachers" / f"{name}-{slug}-{key[:12]}.pt"
    with _file_lock(path.with_suffix(".lock")), torch.random.fork_rng():  # leave the caller's RNG alone
        if not path.exists():
            _train(arch, data, recipe, path, device, progress)
        return _load_checkpoint(name, arch, path, data, device, verify_sidecar=True)


def _load_checkpoint(name, arch: Architecture, path: pathlib.Path, data: Dataset, device, verify_sidecar: bool) -> Teacher:
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not exist")
    sha = file_sha256(path)
    if verify_sidecar:
        side = path.with_suffix(".json")
        try:
            recorded = json.loads(side.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != sha:
            raise TeacherCheckpointError(
                f"cached teacher {path} is corrupt (sha256 {sha[:12]}… does not match its record "
                f"{str(recorded)[:12]}…); delete it and its .json to retrain")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TeacherCheckpointError(f"teacher checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                                     "it is corrupt or not a torch checkpoint") from exc
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
        val_acc, test_acc = ckpt.get("val_accuracy"), ckpt.get("test_accuracy")
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, val_acc, test_acc = ckpt, None, None
    else:
        raise TeacherCheckpointError(f"{path} is neither an n2n-gym teacher checkpoint nor a state_dict")
    module = build(arch, device)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not fit the {name} architecture: {exc}") from exc
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if val_acc is None:
        val_acc = accuracy(module, data, *data.split("val"))
    if test_acc is None:
        test_acc = accuracy(module, data, *data.split("test"))
    return Teacher(name, arch, module, float(val_acc), float(test_acc), sha, data.variant, str(path))


def _train(arch: Architecture, data: Dataset, recipe: Recipe, path: pathlib.Path, device, progress: bool) -> None:
    """Train a teacher, saving a resumable state after every epoch."""
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
    if partial.exists():
        try:
            state = torch.load(partial, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            start = state["epoch"]
        except Exception:  # an unreadable partial state is only lost time: start over
            start = 0
    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=start * steps_per_epoch, disable=not progress,
               desc=f"training teacher {arch.name} on {data.variant}", unit="step")
    for epoch in range(start, recipe.epochs):
        with _num_threads(recipe.threads):
            loss = train_epoch(model, opt, sched, data, x, y, recipe.batch_size, gen, recipe.augment, progress=bar,
                               label_smoothing=recipe.label_smoothing)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "generator": gen.get_state(), "epoch": epoch + 1}, partial)
    bar.close()
    model.eval()
    save_teacher(path, model, data, recipe)
    partial.unlink(missing_ok=True)


def teacher_from_import(imported, data: Dataset, *, name: str = "", device: str | torch.device = "cpu",
                        path: str = "") -> Teacher:
    """A :class:`Teacher` from an ``n2n_gym.importer.ImportedModel`` (a user's ``nn.Module`` in
    the IR): built on ``device``, frozen, its accuracies measured on ``data``'s validation and
    test splits. Its ``sha256`` is the content digest of architecture + weights
    (``ImportedModel.sha256``), so cache keys follow the weights, not a file or a name.

    Raises ``ValueError`` if the model's input shape or number of classes is not the data set's.
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
    return Teacher(name or arch.name, arch, module, float(val_acc), float(test_acc), imported.sha256,
                   data.variant, path)
