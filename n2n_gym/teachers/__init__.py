"""Layer 3, teachers: which teacher each env id means (:mod:`.catalog`), the registry of pinned
teachers identified by the sha256 of their weights (:mod:`.registry`), training, loading and
checking teachers (:mod:`.teacher`, with the supervised loops of :mod:`.training`) and the
import of a user's own PyTorch model into the IR (:mod:`.importer`).

May import: n2n_gym.utils, n2n_gym.ir, n2n_gym.data.

``from n2n_gym.teachers import load_teacher`` keeps working: the names of :mod:`.teacher` are
served from here, loaded on first use.
"""

import importlib as _importlib

__all__ = ["Recipe", "Teacher", "TeacherCheckpointError", "TeacherInvalidError", "TeacherTrainingTooLong",
           "default_recipe", "load_teacher", "save_teacher", "train_teacher", "pin_teacher", "weights_sha256",
           "teacher_from_import", "estimate_training_seconds"]


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_importlib.import_module("n2n_gym.teachers.teacher"), name)
