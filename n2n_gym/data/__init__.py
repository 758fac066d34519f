"""Layer 2, data: the data sets (digits, MNIST, CIFAR-10 variants, user ``npz:`` files), their
splits, content digests, normalisation, augmentation and batching (:mod:`.datasets`).

May import: n2n_gym.utils, n2n_gym.ir.

``from n2n_gym.data import load_dataset`` keeps working: the names of :mod:`.datasets` are
served from here, loaded on first use (``import n2n_gym`` stays free of torch).
"""

import importlib as _importlib

__all__ = ["DATASETS", "DatasetInfo", "DataUnavailableError", "Dataset", "dataset_info", "data_root", "cache_dir",
           "load_dataset", "clear_dataset_cache", "batches", "augment_batch", "make_normalizer", "content_digest",
           "check_splits"]


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_importlib.import_module("n2n_gym.data.datasets"), name)
