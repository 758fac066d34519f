"""Data sets as in-memory uint8 tensors, with whole-tensor batching and augmentation.

A :class:`Dataset` holds the official training and test sets as uint8 NCHW tensors with
int64 labels, plus index tensors for a deterministic, stratified train/validation split
of the official training set. Move it to a device once with :meth:`Dataset.to`; then
:func:`batches` slices, augments (random crop + optional horizontal flip, one gather per
batch) and normalises on that device without per-sample Python, PIL or DataLoader.

Where the files come from: ``root`` argument, else ``$N2N_DATA``, else
``$XDG_CACHE_HOME/n2n_gym/data`` (``~/.cache/n2n_gym/data``). Downloads are allowed
unless ``N2N_OFFLINE=1`` (or ``download=False``); any failure raises
:class:`DataUnavailableError` saying which files to put where.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import socket
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from n2n_gym.utils.files import default_cache_dir

__all__ = [
    "DATASETS",
    "PIXELS",
    "DatasetInfo",
    "DataUnavailableError",
    "Dataset",
    "dataset_info",
    "data_root",
    "cache_dir",
    "load_dataset",
    "clear_dataset_cache",
    "batches",
    "augment_batch",
    "make_normalizer",
    "content_digest",
]

NPZ_PREFIX = "npz:"
DOWNLOAD_TIMEOUT_S = 30.0


class DataUnavailableError(RuntimeError):
    """The data files are not there and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set: what a model and the augmentation need to know."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W as fed to the model
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    flip: bool  # horizontal flip allowed as augmentation
    crop_padding: int  # zero padding of the random-crop augmentation


DATASETS: dict[str, DatasetInfo] = {
    # digits and mnist statistics measured on our train sets (mnist after padding to 32x32)
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3760,), False, 1),
    "mnist": DatasetInfo("mnist", (1, 32, 32), 10, (0.1000,), (0.2752,), False, 4),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 4
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, 4
    ),
    # digits are not mirror-symmetric, hence no flip for svhn
    "svhn": DatasetInfo(
        "svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False, 4
    ),
}


# --------------------------------------------------------------------------- paths


# the package's one cache-folder rule ($N2N_CACHE, else $XDG_CACHE_HOME/n2n_gym, else ~/.cache/n2n_gym)
cache_dir = default_cache_dir


def data_root(root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The data folder: ``root`` if given, else ``$N2N_DATA``, else ``cache_dir()/data``."""
    if root is None:
        root = os.environ.get("N2N_DATA") or None
    if root is None:
        return cache_dir() / "data"
    return pathlib.Path(root).expanduser().resolve()


def _download_allowed(download: bool | None) -> bool:
    if download is None:
        return os.environ.get("N2N_OFFLINE", "") != "1"
    return bool(download)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's downloads use urllib without a timeout: without this they can hang forever
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


_HOW_TO_ALLOW = "or allow downloading (unset N2N_OFFLINE / pass download=True) on a machine with internet"


# --------------------------------------------------------------------------- npz reading


def _npz_path(name: str, root: pathlib.Path | None = None) -> pathlib.Path:
    raw = name[len(NPZ_PREFIX):]
    if not raw:
        raise ValueError("'npz:' needs a file path, e.g. 'npz:/path/data.npz'")
    path = pathlib.Path(raw).expanduser()
    if not path.is_absolute() and not path.exists() and root is not None and (root / path).exists():
        path = root / path  # relative paths: the working directory first, then the data root
    path = path.resolve()
    if not path.is_file():
        raise DataUnavailableError(
            f"npz file {path} not found: expected a .npz with arrays x_train (N,H,W,C uint8), "
            "y_train, x_test, y_test, or x and y only"
        )
    return path


def _npz_headers(path: pathlib.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, reading only the .npy headers."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            out[member[: -len(".npy")]] = (tuple(int(s) for s in shape), np.dtype(dtype))
    return out


def _npz_load(path: pathlib.Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Load arrays of an npz. Big compressed members (e.g. LZMA, slow to unpack) are kept
    uncompressed in the per-user cache, so that later loads take a fraction of a second."""
    st = path.stat()
    tag = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "npz" / tag
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, np.load(path, allow_pickle=False) as npz:
        for key in keys:
            zinfo = zf.getinfo(key + ".npy")
            if zinfo.compress_type == zipfile.ZIP_STORED or zinfo.file_size < (8 << 20):
                out[key] = npz[key]
                continue
            cached = folder / (key + ".npy")
            if cached.is_file():
                try:
                    out[key] = np.load(cached, allow_pickle=False)
                    continue
                except (OSError, ValueError):
                    pass  # a broken cache file: unpack again
            arr = npz[key]
            out[key] = arr
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{key}.{os.getpid()}.tmp.npy"
                np.save(tmp, arr)
                os.replace(tmp, cached)
            except OSError:
                pass  # the cache is only an optimisation
    return out


def _check_image_layout(key: str, shape: tuple, dtype, path: pathlib.Path) -> tuple:
    """The (N, H, W, C) shape of an npz image array (``(N, H, W)``: grey), or ``ValueError``."""
    if dtype != np.uint8:
        raise ValueError(f"{path}: {key} must be uint8 (0..255 pixels), got {dtype}")
    shape = tuple(shape) + ((1,) if len(shape) == 3 else ())
    if len(shape) != 4:
        raise ValueError(f"{path}: {key} must have shape (N, H, W, C), got {shape}")
    if shape[1] in (1, 3) and shape[3] not in (1, 3) and shape[2] == shape[3]:
        # torch's NCHW layout, read as NHWC, would give images 1 or 3 pixels high
        raise ValueError(f"{path}: {key} has shape {shape}, which looks like (N, C, H, W); n2n-gym reads "
                         f"(N, H, W, C): save {key}.transpose(0, 2, 3, 1)")
    return shape


def _check_images(key: str, x: np.ndarray, path: pathlib.Path) -> np.ndarray:
    return x.reshape(_check_image_layout(key, x.shape, x.dtype, path))


def _check_labels(key: str, y: np.ndarray, n: int, path: pathlib.Path) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: {key} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}: {key} has {len(y)} labels for {n} images")
    if n and y.min() < 0:
        raise ValueError(f"{path}: {key} has negative labels")
    return y.astype(np.int64, copy=False)


def _npz_form(keys: set[str], path: pathlib.Path) -> tuple[str, ...]:
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        return ("x_train", "y_train", "x_test", "y_test")
    if {"x", "y"} <= keys:
        return ("x", "y")
    raise ValueError(
        f"{path}: expected arrays x_train, y_train, x_test, y_test (or x and y only), found {sorted(keys)}"
    )


_NPZ_INFO_MEMO: dict[tuple[str, int, int], DatasetInfo] = {}


def _npz_info(path: pathlib.Path) -> DatasetInfo:
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key in _NPZ_INFO_MEMO:
        return _NPZ_INFO_MEMO[memo_key]
    headers = _npz_headers(path)
    form = _npz_form(set(headers), path)
    xkeys, ykeys = form[0::2], form[1::2]
    shapes = []
    for xk in xkeys:
        shape = _check_image_layout(xk, *headers[xk], path)
        if shape[0] == 0:
            raise ValueError(f"{path}: {xk} holds no images; every split needs images")
        shapes.append(shape)
    if len({s[1:] for s in shapes}) != 1:
        raise ValueError(f"{path}: train and test images differ in shape: {[s[1:] for s in shapes]}")
    labels = _npz_load(path, list(ykeys))
    num_classes = 0
    for yk, shape in zip(ykeys, shapes):
        y = _check_labels(yk, labels[yk], shape[0], path)
        if len(y):
            num_classes = max(num_classes, int(y.max()) + 1)
    _, h, w, c = shapes[0]
    # Stats of an arbitrary file would need all pixels unpacked; 0.5/0.5 keeps this cheap
    # and identical between dataset_info() and load_dataset().
    info = DatasetInfo(f"npz:{path}", (c, h, w), num_classes, (0.5,) * c, (0.5,) * c, False, 4 if h >= 16 else 1)
    _NPZ_INFO_MEMO[memo_key] = info
    return info


# --------------------------------------------------------------------------- info


def dataset_info(name: str) -> DatasetInfo:
    """Static info of a named data set, or of ``"npz:/path/file.npz"`` (reads only headers and labels)."""
    if name.startswith(NPZ_PREFIX):
        return _npz_info(_npz_path(name, data_root()))
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(
            f"unknown data set {name!r}: valid names are {', '.join(sorted(DATASETS))}, "
            "or 'npz:/path/file.npz' (arrays x_train, y_train, x_test, y_test, or x and y)"
        )
    return DATASETS[key]


# --------------------------------------------------------------------------- Dataset


def _device_key(device: torch.device | str) -> str:
    d = torch.device(device)
    if d.type != "cpu" and d.index is None:
        d = torch.device(d.type, torch.empty(0, device=d).device.index)
    return str(d)


class Normalizer:
    """Maps uint8 pixels to float32 ``(x/255 - mean)/std``, channels_last. A class, not a
    closure, so that a data set (and an env holding one) pickles; the per-device copies of
    the constants are rebuilt after unpickling."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._scale_cpu = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self._shift_cpu = (-mean_t / std_t).view(1, -1, 1, 1)
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._per_device:
            self._per_device[x.device] = (self._scale_cpu.to(x.device), self._shift_cpu.to(x.device))
        scale, shift = self._per_device[x.device]
        x = x.contiguous(memory_format=torch.channels_last)  # cheap on uint8, kept by the ops below
        return torch.addcmul(shift, x.to(torch.float32), scale)

    def __getstate__(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["mean"], state["std"])


def make_normalizer(info: DatasetInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping uint8 pixels to float32 ``(x/255 - mean)/std``, channels_last."""
    return Normalizer(info.mean, info.std)


@dataclass
class Dataset:
    """A whole data set in memory: uint8 NCHW images, int64 labels, fixed train/val split.

    Tensors returned by :meth:`split` and :meth:`subset` may be shared: do not modify them
    in place.
    """

    info: DatasetInfo
    variant: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    _on_device: dict[str, "Dataset"] = field(default_factory=dict, repr=False, compare=False)
    _splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)
    _normalize: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    _digest: str | None = field(default=None, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """sha256 (hex) of the content: the four arrays (dtype, shape, bytes), the train/val
        split indices and the info (normalisation, augmentation). Identifies the data in
        every cache key, so that a file overwritten with other images is other data."""
        if self._digest is None:
            self._digest = content_digest(self)
        return self._digest

    @property
    def identity(self) -> str:
        """``"<variant> @<first 16 hex digits of digest>"``: the variant's name with its content."""
        return f"{self.variant} @{self.digest[:16]}"

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> "Dataset":
        """This data set on ``device``: ``self`` if already there, else a copy made once and reused."""
        key = _device_key(device)
        if _device_key(self.device) == key:
            return self
        if key not in self._on_device:
            moved = {
                f.name: getattr(self, f.name).to(key)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            }
            self._on_device[key] = Dataset(info=self.info, variant=self.variant, **moved, _digest=self._digest)
        return self._on_device[key]

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x uint8, y int64)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which == "test":
            return self.x_test, self.y_test
        if which not in ("train", "val"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        if which not in self._splits:
            idx = self.train_idx if which == "train" else self.val_idx
            self._splits[which] = (self.x_train[idx], self.y_train[idx])
        return self._splits[which]

    def subset(self, which: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples of a split in a fixed, seeded, class-interleaved order.

        The order is a random permutation re-sorted so that every prefix holds the classes
        in proportion to the split (nested: a smaller ``n`` gives a prefix of a larger one).
        ``n`` None or at least the split size gives the whole split.
        """
        x, y = self.split(which)
        if n is None or n >= len(y):
            return x, y
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        order = _interleaved_order(y.cpu().numpy(), seed)[:n]
        idx = torch.from_numpy(order).to(y.device)
        return x[idx], y[idx]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """float32 ``(x/255 - mean)/std`` in channels_last memory format."""
        if self._normalize is None:
            self._normalize = make_normalizer(self.info)
        return self._normalize(x_uint8)


def content_digest(data: Dataset) -> str:
    """sha256 of a data set's content (see :attr:`Dataset.digest`); about 0.5 s for CIFAR-10."""
    h = hashlib.sha256(b"n2n-gym data v1\0")
    h.update(repr(dataclasses.astuple(data.info)[1:]).encode())  # not the name: an npz's name is its path
    for name in ("x_train", "y_train", "x_test", "y_test", "train_idx", "val_idx"):
        t = getattr(data, name).detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _interleaved_order(y: np.ndarray, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(len(y))
    yp = y[perm]
    # rank of each sample among its class in permuted order, as a fraction of the class size
    by_class = np.argsort(yp, kind="stable")
    counts = np.bincount(yp)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(yp), dtype=np.int64)
    rank[by_class] = np.arange(len(yp)) - np.repeat(starts, counts)
    key = (rank + 0.5) / counts[yp]
    return perm[np.argsort(key, kind="stable")]


# --------------------------------------------------------------------------- splitting


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (rest, held-out) with ``fraction`` held out, stratified by class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    try:
        rest, held = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError:
        # too few samples per class to stratify (tiny npz files): plain seeded split
        rest, held = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(rest), np.sort(held)


# --------------------------------------------------------------------------- sources


def _images_nhwc(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).contiguous()


def _labels(y: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64).contiguous()


Raw = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # variant, x/y train, x/y test


#: how each data set's source images become the uint8 pixels a model's ``(x / 255 - mean) / std``
#: is applied to, where that is not the source's own pixels (written into a saved student's
#: JSON, so that a deployer feeds it what it was trained on; kept out of :class:`DatasetInfo`,
#: whose fields are in every data digest)
PIXELS: dict[str, str] = {
    "digits": "scikit-learn's load_digits().images (0-16) scaled to 0-255: round(x * 255 / 16), uint8",
    "mnist": "the 28x28 images zero-padded to 32x32 (2 pixels on each side)",
}


def _load_digits() -> Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    # no official test split: a fixed stratified 20 % stands in for one
    tr, te = _stratified_split(y, 0.2, 0)
    return "digits (scikit-learn)", torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[te]), torch.from_numpy(y[te])


def _torchvision_pair(make: Callable[[bool, bool], Any], download: bool) -> tuple[Any, Any]:
    """(train, test) torchvision data sets; ``make(train, download)`` builds one."""
    if not download:
        return make(True, False), make(False, False)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        return make(True, True), make(False, True)


def _try_download(what: str, make: Callable[[bool, bool], Any], root: pathlib.Path, allowed: bool, how: str) -> tuple[Any, Any]:
    """Files missing: download if allowed, else (or on failure) DataUnavailableError."""
    if not allowed:
        raise DataUnavailableError(f"{what} not found under {root}: {how}, {_HOW_TO_ALLOW}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _torchvision_pair(make, True)
    except Exception as e:  # noqa: BLE001 - any download failure means the same to the caller
        raise DataUnavailableError(
            f"{what} not found under {root} and downloading failed ({type(e).__name__}: {e}): {how}"
        ) from e


def _load_mnist(root: pathlib.Path, download: bool) -> Raw:
    from torchvision import datasets

    def make(train: bool, dl: bool) -> Any:
        return datasets.MNIST(str(root), train=train, download=dl)

    how = (
        f"put the four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed) in {root / 'MNIST' / 'raw'}, "
        "or point N2N_DATA (or root=) at a folder that has MNIST/raw"
    )
    try:
        train, test = _torchvision_pair(make, False)
    except RuntimeError:
        train, test = _try_download(f"MNIST (looked in {root / 'MNIST' / 'raw'})", make, root, download, how)

    def prep(d: Any) -> torch.Tensor:
        return F.pad(d.data, (2, 2, 2, 2)).unsqueeze(1).contiguous()  # 28x28 -> 32x32, zeros

    return "mnist", prep(train), _labels(train.targets), prep(test), _labels(test.targets)


def _cifar10_from_npz(folder: pathlib.Path) -> Raw:
    paths = [folder / f"cifar10-{split}.npz" for split in ("train", "test")]
    # the members are LZMA-compressed (slow to unpack the first time); lzma releases the GIL
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda p: _npz_load(p, ["x", "y", "official_index"]), paths))
    parts = []
    for path, arrays in zip(paths, loaded):
        x = _check_images("x", arrays["x"], path)
        y = _check_labels("y", arrays["y"], len(x), path)
        # rows are stored by class; put them back in the official (torchvision) order
        order = torch.from_numpy(np.argsort(arrays["official_index"], kind="stable"))
        parts += [_images_nhwc(torch.from_numpy(x)[order]), torch.from_numpy(y)[order].contiguous()]
    return ("cifar10-jpeg (npz, JPEG-derived)", *parts)  # type: ignore[return-value]


def _load_cifar10(root: pathlib.Path, download: bool) -> Raw:
    from torchvision import datasets

    def make(train: bool, dl: bool) -> Any:
        return datasets.CIFAR10(str(root), train=train, download=dl)

    if (root / "cifar-10-batches-py").is_dir():
        try:
            train, test = _torchvision_pair(make, False)
            return _torchvision_cifar("cifar10 (torchvision)", train, test)
        except RuntimeError:
            pass  # incomplete or corrupt batches (torchvision's integrity check): try the npz
    npz = root / "cifar10"
    if (npz / "cifar10-train.npz").is_file() and (npz / "cifar10-test.npz").is_file():
        return _cifar10_from_npz(npz)
    how = (
        f"put torchvision's cifar-10-batches-py folder (unpacked cifar-10-python.tar.gz) in {root}, "
        f"or the arrays cifar10-train.npz and cifar10-test.npz (keys x, y, official_index) in {npz}, "
        "or point N2N_DATA (or root=) at a folder that has either"
    )
    train, test = _try_download("CIFAR-10", make, root, download, how)
    return _torchvision_cifar("cifar10 (torchvision)", train, test)


def _torchvision_cifar(variant: str, train: Any, test: Any) -> Raw:
    return variant, _images_nhwc(train.data), _labels(train.targets), _images_nhwc(test.data), _labels(test.targets)


def _load_cifar100(root: pathlib.Path, download: bool) -> Raw:
    from torchvision import datasets

    def make(train: bool, dl: bool) -> Any:
        return datasets.CIFAR100(str(root), train=train, download=dl)

    how = f"put torchvision's cifar-100-python folder (unpacked cifar-100-python.tar.gz) in {root}, or point N2N_DATA (or root=) at a folder that has it"
    try:
        train, test = _torchvision_pair(make, False)
    except RuntimeError:
        train, test = _try_download("CIFAR-100", make, root, download, how)
    return _torchvision_cifar("cifar100", train, test)


def _load_svhn(root: pathlib.Path, download: bool) -> Raw:
    from torchvision import datasets

    def make(train: bool, dl: bool) -> Any:
        return datasets.SVHN(str(root), split="train" if train else "test", download=dl)

    how = f"put train_32x32.mat and test_32x32.mat (SVHN format 2) in {root}, or point N2N_DATA (or root=) at a folder that has them"
    try:
        train, test = _torchvision_pair(make, False)
    except RuntimeError:
        train, test = _try_download("SVHN", make, root, download, how)
    # torchvision already maps SVHN's label 10 to 0 and gives (N, C, H, W)
    return (
        "svhn",
        torch.from_numpy(np.ascontiguousarray(train.data)),
        _labels(train.labels),
        torch.from_numpy(np.ascontiguousarray(test.data)),
        _labels(test.labels),
    )


def _load_npz(path: pathlib.Path) -> Raw:
    info = _npz_info(path)  # validates the layout from the headers first
    form = _npz_form(set(_npz_headers(path)), path)
    arrays = _npz_load(path, list(form))
    if form == ("x", "y"):
        x = _check_images("x", arrays["x"], path)
        y = _check_labels("y", arrays["y"], len(x), path)
        tr, te = _stratified_split(y, 0.2, 0)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
        xtr = _check_images("x_train", arrays["x_train"], path)
        ytr = _check_labels("y_train", arrays["y_train"], len(xtr), path)
        xte = _check_images("x_test", arrays["x_test"], path)
        yte = _check_labels("y_test", arrays["y_test"], len(xte), path)
    return info.name, _images_nhwc(xtr), torch.from_numpy(ytr), _images_nhwc(xte), torch.from_numpy(yte)


def _check_arrays(variant: str, where: pathlib.Path, info: DatasetInfo,
                  splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Images and labels as read from the files under ``where``: uint8 images of the data
    set's shape, one int64 label per image, labels in [0, classes). ``ValueError`` naming
    the files otherwise (a damaged or foreign file must not become a number)."""
    for split, (x, y) in splits.items():
        what = f"{variant} ({where}), {split} split"
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != info.input_shape:
            raise ValueError(f"{what}: images are {x.dtype} {tuple(x.shape[1:])}, expected uint8 {info.input_shape}")
        if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{what}: labels are {y.dtype} {tuple(y.shape)}, expected {len(x)} int64 labels")
        if len(y) and not (0 <= int(y.min()) and int(y.max()) < info.num_classes):
            raise ValueError(f"{what}: labels span {int(y.min())}..{int(y.max())}, outside the data set's "
                             f"0..{info.num_classes - 1}")


_LOADERS: dict[str, Callable[[pathlib.Path, bool], Raw]] = {
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "svhn": _load_svhn,
}

_MEMO: dict[tuple[Any, ...], Dataset] = {}


def clear_dataset_cache() -> None:
    """Forget the data sets that :func:`load_dataset` keeps in memory."""
    _MEMO.clear()
    _NPZ_INFO_MEMO.clear()


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> Dataset:
    """Load a data set onto the CPU (memoised per process; move it with :meth:`Dataset.to`).

    ``download`` None means allowed unless ``N2N_OFFLINE=1``. ``val_fraction`` of the
    official training set becomes the stratified validation split (seeded by ``split_seed``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    resolved = data_root(root)
    if name.startswith(NPZ_PREFIX):
        path = _npz_path(name, resolved)
        st = path.stat()
        key: tuple[Any, ...] = (f"npz:{path}", st.st_size, st.st_mtime_ns, val_fraction, split_seed)
    else:
        info = dataset_info(name)  # ValueError for unknown names
        key = (info.name, str(resolved), val_fraction, split_seed)
    if key in _MEMO:
        return _MEMO[key]

    if name.startswith(NPZ_PREFIX):
        info = _npz_info(path)
        raw = _load_npz(path)
    elif info.name == "digits":
        raw = _load_digits()
    else:
        raw = _LOADERS[info.name](resolved, _download_allowed(download))
    variant, x_train, y_train, x_test, y_test = raw
    _check_arrays(variant, path if name.startswith(NPZ_PREFIX) else resolved, info,
                  {"train": (x_train, y_train), "test": (x_test, y_test)})
    tr, va = _stratified_split(y_train.numpy(), val_fraction, split_seed)
    ds = Dataset(
        info=info,
        variant=variant,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        train_idx=torch.from_numpy(tr).to(torch.int64),
        val_idx=torch.from_numpy(va).to(torch.int64),
    )
    check_splits(ds)  # empty split / one class: ValueError; splits too small to rank students: warning
    _MEMO[key] = ds
    return ds


# --------------------------------------------------------------------------- batching


def augment_batch(
    x_uint8: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop (zero padding ``info.crop_padding``) and, if ``info.flip``, random
    horizontal flip of a uint8 NCHW batch, as one gather. Random numbers come from the
    (CPU) ``generator`` and are then moved to the batch's device."""
    n, c, h, w = x_uint8.shape
    p = int(info.crop_padding)
    dev = x_uint8.device
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = dy[:, None] + ar_h  # (n, h) in padded coordinates
    cols = dx[:, None] + ar_w
    if info.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], dx[:, None] + (w - 1 - ar_w), cols)
    padded = F.pad(x_uint8, (p, p, p, p)) if p else x_uint8
    rows, cols = rows.to(dev), cols.to(dev)
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: bool = False,
    info: DatasetInfo | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(normalised float32 channels_last batch, labels)`` over uint8 ``x``.

    ``normalize`` defaults to ``info``'s mean/std (plain ``x/255`` without ``info``);
    ``augment`` needs ``info``. Shuffling and augmentation draw from ``generator`` (CPU).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if augment and info is None:
        raise ValueError("augment=True needs info (crop padding and flip)")
    if normalize is None:
        if info is not None:
            normalize = make_normalizer(info)
        else:
            def normalize(t: torch.Tensor) -> torch.Tensor:
                return t.contiguous(memory_format=torch.channels_last).to(torch.float32) / 255.0
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            xb, yb = x[start:end], y[start:end]
        else:
            idx = order[start:end]
            xb, yb = x[idx], y[idx]
        if augment:
            assert info is not None
            xb = augment_batch(xb, info, generator)
        yield normalize(xb), yb


#: A validation/test split smaller than this cannot rank students reliably: one image is
#: then worth >= 1 % of accuracy, more than the gaps between good students (warning only).
MIN_RANKING_IMAGES = 100


def check_splits(data, *, min_ranking: int = MIN_RANKING_IMAGES) -> None:
    """Refuse a data set with an empty split or fewer than two classes in its training
    split; warn (``UserWarning``) about validation/test splits too small to rank students."""
    sizes = {"train": len(data.train_idx), "validation": len(data.val_idx), "test": len(data.x_test)}
    empty = [k for k, n in sizes.items() if n == 0]
    if empty:
        raise ValueError(f"{data.variant}: the {' and '.join(empty)} split(s) are empty (sizes {sizes}); every split "
                         f"needs images: add images (npz: x_train/y_train and x_test/y_test) or lower val_fraction")
    classes = int(data.y_train[data.train_idx].unique().numel())
    if classes < 2:
        raise ValueError(f"{data.variant}: the training split holds {classes} class; a classifier needs at least 2 "
                         f"(a one-class data set makes every accuracy 1 and every reward meaningless)")
    small = {k: n for k, n in sizes.items() if k != "train" and n < min_ranking}
    if small:
        warnings.warn(f"{data.variant}: split(s) {small} hold fewer than {min_ranking} images: one image is worth "
                      f">= 1 % accuracy, too coarse to rank students; use a larger data set", UserWarning,
                      stacklevel=3)
