"""The registry of pinned teachers: which trained weights each registered env means.

A *pin* names one teacher by content: the zoo architecture, the data set (variant name and
:attr:`n2n_gym.data.Dataset.digest`), the training recipe, the sha256 of its weights
(:func:`n2n_gym.teachers.weights_sha256`: over the tensors, so the writer and pickle
bytes of the file do not matter), its accuracies on that data's validation and test
splits, and how to reproduce it. The registry is ``n2n_gym/teachers/pinned/registry.json`` (package
data); the teachers the project's benchmarks use are stored next to it.

A pinned teacher's file is looked for, in order, in ``$N2N_TEACHERS`` (a folder, or
several separated by ``os.pathsep``), in the package's own ``pinned/`` folder, in the
cache's ``teachers/pinned/`` folder (where ``n2n-gym teacher train`` puts it), and at
``$N2N_TEACHERS_URL/<file>`` where downloads are allowed (not ``N2N_OFFLINE=1``); every
candidate is verified by the sha256 of its weights. ``legacy_sha256`` lists file sha256s
that records of earlier versions carry for the same weights (file digests, before
teachers were identified by content), with the evidence in ``legacy_note``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from n2n_gym.teachers.catalog import ENVS
from n2n_gym.utils.files import (
    replace_atomically,
    atomic_write_text,
    default_cache_dir,
)

PINNED_DIR = pathlib.Path(__file__).resolve().parent / "pinned"
REGISTRY_PATH = PINNED_DIR / "registry.json"
REGISTRY_FORMAT = "n2n-gym-teacher-registry"


@dataclass(frozen=True)
class Pin:
    """One pinned teacher (see the module docstring)."""

    id: str
    teacher: str  # zoo name
    dataset: str  # data set name as given to gym.make
    data_variant: str
    data_digest: str
    recipe: dict  # n2n_gym.teachers.Recipe fields
    sha256: str  # of the weights' content
    val_accuracy: float
    test_accuracy: float
    params: int
    file: str | None = None  # file name in the search folders; None: not stored anywhere, train it
    file_bytes: int | None = None
    stored: bool = False  # shipped in the package's pinned/ folder
    dtype: str = "float32"
    train_seconds: float | None = None
    train_conditions: str = ""
    reproduce: str = ""
    legacy_sha256: tuple[str, ...] = ()
    legacy_note: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["legacy_sha256"] = list(self.legacy_sha256)
        return d

    def knows(self, sha256: str | None) -> bool:
        """Whether ``sha256`` names this teacher (its content sha or a legacy file sha)."""
        return bool(sha256) and (sha256 == self.sha256 or sha256 in self.legacy_sha256)


def _read(path: pathlib.Path = REGISTRY_PATH) -> dict:
    if not path.is_file():
        return {"format": REGISTRY_FORMAT, "version": 1, "teachers": {}}
    doc = json.loads(path.read_text())
    if doc.get("format") != REGISTRY_FORMAT:
        raise ValueError(f"{path} is not an n2n-gym teacher registry")
    return doc


def pins(path: pathlib.Path = REGISTRY_PATH) -> dict[str, Pin]:
    """Every pinned teacher, by id."""
    out = {}
    for pid, d in _read(path)["teachers"].items():
        d = dict(d, id=pid)
        d["legacy_sha256"] = tuple(d.get("legacy_sha256") or ())
        known = {f.name for f in dataclasses.fields(Pin)}
        out[pid] = Pin(**{k: v for k, v in d.items() if k in known})
    return out


def write_pin(pin: Pin, path: pathlib.Path = REGISTRY_PATH) -> None:
    """Add or replace ``pin`` in the registry file (atomic write)."""

    doc = _read(path)
    d = pin.to_dict()
    d.pop("id")
    doc["teachers"][pin.id] = d
    doc["teachers"] = dict(sorted(doc["teachers"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def find(teacher: str, data_digest: str, recipe: dict | None = None) -> Pin | None:
    """The pin of zoo teacher ``teacher`` trained on the data with ``data_digest`` (and, if
    given, by ``recipe``); None if there is none."""
    for pin in pins().values():
        if pin.teacher == teacher and pin.data_digest == data_digest and (recipe is None or pin.recipe == recipe):
            return pin
    return None


def for_names(teacher: str, dataset: str) -> list[Pin]:
    """Pins of zoo teacher ``teacher`` on the data set named ``dataset`` (any content)."""
    return [p for p in pins().values() if p.teacher == teacher and p.dataset == dataset]


def by_sha(sha256: str) -> Pin | None:
    """The pin whose weights (or a legacy file) have ``sha256``."""
    return next((p for p in pins().values() if p.knows(sha256)), None)


def search_dirs() -> list[pathlib.Path]:
    """Where pinned teacher files are looked for, in order."""

    dirs = [pathlib.Path(p).expanduser() for p in os.environ.get("N2N_TEACHERS", "").split(os.pathsep) if p]
    return dirs + [PINNED_DIR, default_cache_dir() / "teachers" / "pinned"]


def candidates(pin: Pin) -> list[pathlib.Path]:
    """Existing files that may hold ``pin`` (verify them: the name proves nothing)."""
    if not pin.file:
        return []
    names = [pin.file, f"{pin.sha256}.pt"]
    return [d / n for d in search_dirs() for n in names if (d / n).is_file()]


def download(pin: Pin) -> pathlib.Path | None:
    """Fetch ``$N2N_TEACHERS_URL/<file>`` into the cache (None: no URL set, downloads not
    allowed, or no file). The caller verifies the content."""

    base = os.environ.get("N2N_TEACHERS_URL")
    if not base or not pin.file or os.environ.get("N2N_OFFLINE", "") == "1":
        return None
    dest = default_cache_dir() / "teachers" / "pinned" / pin.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = base.rstrip("/") + "/" + pin.file
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - a user-configured base URL
        replace_atomically(dest, lambda f: f.write(resp.read()))
    return dest


def registry_summary() -> list[dict[str, Any]]:
    return [p.to_dict() for p in pins().values()]


def env_teacher(env_id_or_pin: str) -> tuple[str, str, Pin | None]:
    """(zoo teacher, data set, pin or None) of a registered env id or a pin id."""
    if env_id_or_pin in ENVS:
        teacher, dataset, _ = ENVS[env_id_or_pin]
        found = for_names(teacher, dataset)
        return teacher, dataset, found[0] if found else None
    all_pins = pins()
    if env_id_or_pin in all_pins:
        p = all_pins[env_id_or_pin]
        return p.teacher, p.dataset, p
    raise KeyError(f"unknown id {env_id_or_pin!r}: pass a registered env id ({', '.join(ENVS)}) or a pinned "
                   f"teacher id ({', '.join(all_pins) or 'none'})")
