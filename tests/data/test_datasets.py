"""Tests of n2n_gym.data: loading, splits, batching, augmentation, npz and error paths.

The MNIST / CIFAR-10 tests use real files only where the env var N2N_DATA points at a
folder that has them (otherwise they are skipped). Nothing here touches the network.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch

from n2n_gym.data import datasets as D
from n2n_gym.data.datasets import clear_dataset_cache, dataset_info, load_dataset
from n2n_gym.envs.env import N2NEnv


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2N_OFFLINE", "1")


@pytest.fixture
def digits() -> D.Dataset:
    return D.load_dataset("digits")


def _shared_root() -> pathlib.Path:
    root = os.environ.get("N2N_DATA")
    if not root:
        pytest.skip("N2N_DATA is not set")
    return pathlib.Path(root)


def test_digits_loads(digits: D.Dataset) -> None:
    ds = digits
    assert ds.variant == "digits (scikit-learn)"
    assert ds.info is D.DATASETS["digits"]
    assert ds.info.num_classes == 10 and ds.info.input_shape == (1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.x_test.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == pytest.approx(0.2 * 1797, abs=1)
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())


def test_digits_splits_disjoint_stratified_deterministic(digits: D.Dataset) -> None:
    ds = digits
    tr, va = ds.train_idx, ds.val_idx
    assert tr.dtype == torch.int64 and va.dtype == torch.int64
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(len(ds.x_train)))
    assert len(va) == pytest.approx(0.1 * len(ds.x_train), abs=1)
    # stratified: every class's share of the val split is within one sample of its share overall
    counts_all = torch.bincount(ds.y_train, minlength=10).double()
    counts_val = torch.bincount(ds.y_train[va], minlength=10).double()
    assert torch.all((counts_val - counts_all * len(va) / len(ds.y_train)).abs() <= 1.0)

    xv, yv = ds.split("val")
    assert torch.equal(yv, ds.y_train[va]) and torch.equal(xv, ds.x_train[va])
    assert ds.split("test")[0] is ds.x_test

    D.clear_dataset_cache()
    again = D.load_dataset("digits")
    assert again is not ds
    for name in ("x_train", "y_train", "x_test", "y_test", "train_idx", "val_idx"):
        assert torch.equal(getattr(again, name), getattr(ds, name)), name
    assert D.load_dataset("digits") is again  # memoised

    other = D.load_dataset("digits", val_fraction=0.2, split_seed=1)
    assert len(other.val_idx) == pytest.approx(0.2 * len(ds.x_train), abs=1)
    assert not torch.equal(other.val_idx[: len(va)], va)


def test_subset_deterministic_nested_balanced(digits: D.Dataset) -> None:
    x, y = digits.subset("train", 100)
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)
    assert torch.bincount(y, minlength=10).min() >= 9  # about 10 per class
    x2, y2 = digits.subset("train", 100)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = digits.subset("train", 250)
    assert torch.equal(x3[:100], x) and torch.equal(y3[:100], y)
    assert not torch.equal(digits.subset("train", 100, seed=1)[0], x)
    whole = digits.split("train")
    assert digits.subset("train", None)[0] is whole[0]
    assert digits.subset("train", 10**9)[0] is whole[0]


def test_to_and_normalize(digits: D.Dataset) -> None:
    assert digits.to("cpu") is digits
    on_meta = digits.to("meta")
    assert on_meta is not digits and on_meta.x_train.device.type == "meta"
    assert on_meta.val_idx.device.type == "meta" and on_meta.info is digits.info
    assert digits.to(torch.device("meta")) is on_meta  # moved once
    assert digits.x_train.device.type == "cpu"
    z = digits.normalize(digits.x_test[:5])
    assert z.dtype == torch.float32 and z.is_contiguous(memory_format=torch.channels_last)
    mean, std = digits.info.mean[0], digits.info.std[0]
    expected = (digits.x_test[:5].float() / 255 - mean) / std
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)
    # the info statistics are those of the train set
    train = digits.normalize(digits.x_train)
    assert abs(train.mean().item()) < 0.01 and abs(train.std().item() - 1) < 0.01


@pytest.mark.parametrize("batch_size", [1, 64, 100, 5000])
def test_batches_cover_every_sample_once(digits: D.Dataset, batch_size: int) -> None:
    x, y = digits.split("train")
    ids = torch.arange(len(y))  # labels that name the sample, to track it through the shuffle
    g = torch.Generator().manual_seed(0)
    seen, sizes = [], []
    for xb, yb in D.batches(x, ids, batch_size, shuffle=True, generator=g, info=digits.info):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 8, 8)
        assert xb.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xb, digits.normalize(x[yb]))
        seen.append(yb)
        sizes.append(len(yb))
    allseen = torch.cat(seen)
    assert sorted(allseen.tolist()) == list(range(len(y)))
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    if batch_size < len(y):
        assert not torch.equal(allseen, torch.arange(len(y)))  # actually shuffled


def test_batches_order_drop_last_and_determinism(digits: D.Dataset) -> None:
    x, y = digits.split("train")
    got = torch.cat([yb for _, yb in D.batches(x, y, 100, shuffle=False)])
    assert torch.equal(got, y)
    sizes = [len(yb) for _, yb in D.batches(x, y, 100, shuffle=False, drop_last=True)]
    assert sizes == [100] * (len(y) // 100)

    def run(seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [xb for xb, _ in D.batches(x, y, 256, shuffle=True, generator=g, augment=True, info=digits.info)]

    a, b = run(3), run(3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, run(4)))
    with pytest.raises(ValueError):
        next(D.batches(x, y, 10, shuffle=False, augment=True))


def _info(flip: bool, pad: int, c: int = 3, hw: int = 8) -> D.DatasetInfo:
    return D.DatasetInfo("t", (c, hw, hw), 10, (0.5,) * c, (0.5,) * c, flip, pad)


def _images(n: int, c: int = 3, hw: int = 8) -> torch.Tensor:
    # every pixel distinct and non-zero, so positions can be recognised after the crop
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, c, hw, hw), dtype=torch.uint8, generator=g)


def test_augment_crop_is_a_window_of_the_padded_image() -> None:
    x = _images(64)
    info = _info(flip=False, pad=2)
    out = D.augment_batch(x, info, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(found) == 1, i
        offsets.append(found[0])
    assert len(set(offsets)) > 5  # random offsets, not one fixed shift
    assert any(o != (2, 2) for o in offsets)  # content actually moves
    assert not torch.equal(out, x)


def test_augment_flips_only_when_allowed() -> None:
    x = _images(200)
    no_flip = D.augment_batch(x, _info(flip=False, pad=0), torch.Generator().manual_seed(0))
    assert torch.equal(no_flip, x)  # no padding and no flip: identity

    out = D.augment_batch(x, _info(flip=True, pad=0), torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ same)
    assert 60 < int(flipped.sum()) < 140

    out_pad = D.augment_batch(x, _info(flip=True, pad=1), torch.Generator().manual_seed(1))
    assert out_pad.shape == x.shape and out_pad.dtype == torch.uint8

    # the built-in data sets: flips only for CIFAR
    assert {n for n, i in D.DATASETS.items() if i.flip} == {"cifar10", "cifar100"}
    assert D.DATASETS["digits"].crop_padding == 1 and D.DATASETS["cifar10"].crop_padding == 4


def _write_npz(path: pathlib.Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_round_trip_train_test(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (120, 6, 5, 3), dtype=np.uint8)
    ytr = np.repeat(np.arange(4), 30)
    xte = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    yte = np.repeat(np.arange(4), 5)
    name = _write_npz(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

    info = D.dataset_info(name)
    assert info.input_shape == (3, 6, 5) and info.num_classes == 4
    assert len(info.mean) == 3 and len(info.std) == 3

    with pytest.warns(UserWarning, match=r"\{'validation': 30, 'test': 20\} hold fewer than 100 images"):
        ds = D.load_dataset(name, val_fraction=0.25)
    assert ds.variant == f"npz:{(tmp_path / 'd.npz').resolve()}"
    assert ds.info == info
    assert torch.equal(ds.x_train, torch.from_numpy(xtr).permute(0, 3, 1, 2))
    assert torch.equal(ds.x_test, torch.from_numpy(xte).permute(0, 3, 1, 2))
    assert ds.y_train.dtype == torch.int64 and torch.equal(ds.y_train, torch.from_numpy(ytr))
    assert torch.equal(ds.y_test, torch.from_numpy(yte))
    assert set(torch.bincount(ds.y_train[ds.val_idx]).tolist()) <= {7, 8}
    assert len(ds.val_idx) == 30 and len(ds.train_idx) == 90
    xb, _ = next(D.batches(*ds.split("train"), 16, shuffle=True, augment=True, info=ds.info,
                           generator=torch.Generator().manual_seed(0)))
    assert xb.shape == (16, 3, 6, 5)


def test_npz_round_trip_x_y_only(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (100, 4, 4), dtype=np.uint8)  # grey images without channel axis
    y = np.tile(np.arange(5), 20)
    name = _write_npz(tmp_path / "xy.npz", x=x, y=y)
    info = D.dataset_info(name)
    assert info.input_shape == (1, 4, 4) and info.num_classes == 5
    with pytest.warns(UserWarning, match="too coarse to rank students"):
        ds = D.load_dataset(name)
    assert len(ds.x_test) == 20 and len(ds.x_train) == 80
    assert torch.bincount(ds.y_test).tolist() == [4] * 5  # stratified 20 % test split
    # together the splits are the file's samples, each once
    both = torch.cat([ds.x_train, ds.x_test]).reshape(100, -1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, x.reshape(100, -1)))
    again = D.load_dataset(name)
    assert again is ds


def test_npz_validation_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        D.dataset_info(_write_npz(tmp_path / "f.npz", x=np.zeros((4, 2, 2, 1), np.float32), y=np.zeros(4, int)))
    with pytest.raises(ValueError, match="x_train"):
        D.dataset_info(_write_npz(tmp_path / "k.npz", images=np.zeros((4, 2, 2, 1), np.uint8)))
    with pytest.raises(ValueError, match="labels"):
        D.load_dataset(_write_npz(tmp_path / "n.npz", x=np.zeros((4, 2, 2, 1), np.uint8), y=np.zeros(3, int)))
    with pytest.raises(ValueError, match="shape"):
        D.dataset_info(_write_npz(tmp_path / "s.npz", x=np.zeros((4, 2), np.uint8), y=np.zeros(4, int)))
    with pytest.raises(D.DataUnavailableError, match="not found"):
        D.dataset_info(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match=r"looks like \(N, C, H, W\).*transpose\(0, 2, 3, 1\)"):
        D.dataset_info(_write_npz(tmp_path / "c.npz", x=np.zeros((4, 3, 8, 8), np.uint8), y=np.zeros(4, int)))
    grey_nhwc = _write_npz(tmp_path / "g.npz", x=np.zeros((4, 8, 8, 1), np.uint8), y=np.arange(4) % 2)
    assert D.dataset_info(grey_nhwc).input_shape == (1, 8, 8)  # NHWC with C = 1 or 3 still reads


def test_unknown_name() -> None:
    with pytest.raises(ValueError) as e:
        D.dataset_info("imagenet")
    assert "cifar10" in str(e.value) and "npz:" in str(e.value)
    with pytest.raises(ValueError):
        D.load_dataset("imagenet")


def test_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    assert D.data_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("N2N_DATA", str(tmp_path / "env"))
    assert D.data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("N2N_DATA")
    monkeypatch.delenv("N2N_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.data_root() == tmp_path / "xdg" / "n2n_gym" / "data"
    # one cache-folder rule for the whole package: $N2N_CACHE first, as for the result cache
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    assert D.data_root() == tmp_path / "cache" / "data"


def test_mnist_missing_offline(tmp_path: pathlib.Path) -> None:
    with pytest.raises(D.DataUnavailableError) as e:
        D.load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "N2N_OFFLINE" in msg


def test_cifar10_missing_offline(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()  # an incomplete torchvision folder is not enough
    with pytest.raises(D.DataUnavailableError) as e:
        D.load_dataset("cifar10", root=tmp_path, download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar10-train.npz" in msg and str(tmp_path) in msg


def test_mnist_from_shared_folder() -> None:
    root = _shared_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no MNIST under {root}")
    ds = D.load_dataset("mnist")
    assert ds.variant == "mnist"
    assert ds.x_train.shape == (60000, 1, 32, 32) and ds.x_test.shape == (10000, 1, 32, 32)
    assert ds.x_train.dtype == torch.uint8
    assert torch.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # 2-pixel zero border from padding 28x28 to 32x32
    assert int(ds.x_train[:, :, :2].max()) == 0 and int(ds.x_train[:, :, :, -2:].max()) == 0
    assert ds.x_train.float().mean().item() / 255 == pytest.approx(0.1307 * 784 / 1024, abs=1e-3)
    assert len(ds.val_idx) == 6000


def test_cifar10_from_shared_folder() -> None:
    root = _shared_root()
    if not (root / "cifar10" / "cifar10-train.npz").is_file() and not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no CIFAR-10 under {root}")
    ds = D.load_dataset("cifar10")
    assert ds.variant in ("cifar10 (torchvision)", "cifar10-jpeg (npz, JPEG-derived)")
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.bincount(ds.y_train).tolist() == [5000] * 10
    # official (torchvision) sample order
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.y_test[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(ds.y_train[ds.val_idx]).tolist() == [500] * 10
    subset = root / "cifar10-subset.npz"
    if subset.is_file():
        # the first official training images, genuine: close to ours (JPEG error only)
        genuine = torch.from_numpy(np.load(subset)["x_train"][:64]).permute(0, 3, 1, 2)
        mae = (genuine.float() - ds.x_train[:64].float()).abs().mean().item()
        assert mae < (8.0 if ds.variant.startswith("cifar10-jpeg") else 0.5)


def _npz(path: pathlib.Path, n_train: int = 200, n_test: int = 120, classes: int = 3, hw: int = 8) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, hw, hw, 1), dtype=np.uint8),
             y_train=np.arange(n_train) % classes,
             x_test=rng.integers(0, 256, (n_test, hw, hw, 1), dtype=np.uint8), y_test=np.arange(n_test) % classes)
    return f"npz:{path}"


def test_npz_with_an_empty_test_split_is_refused_at_make(tmp_path):
    name = _npz(tmp_path / "d.npz", n_test=0)
    with pytest.raises(ValueError, match="x_test holds no images"):
        N2NEnv(teacher="digitsnet", dataset=name)


def test_one_class_data_is_refused(tmp_path):
    name = _npz(tmp_path / "one.npz", classes=1)
    with pytest.raises(ValueError, match="1 class"):
        N2NEnv(teacher="digitsnet", dataset=name)


def test_splits_too_small_to_rank_students_are_named_in_a_warning(tmp_path):
    name = _npz(tmp_path / "small.npz", n_train=40, n_test=30)
    clear_dataset_cache()
    with pytest.warns(UserWarning, match=r"'validation': 4, 'test': 30\} hold fewer than 100 images"):
        load_dataset(name)
    assert dataset_info(name).num_classes == 3


def test_empty_validation_split_is_refused_at_load(tmp_path):
    name = _npz(tmp_path / "d.npz")
    clear_dataset_cache()
    with pytest.raises(ValueError, match="validation split"):
        load_dataset(name, val_fraction=0.0)


# ---------------------------------------------------------------------------- data files
def _cifar_npz(folder, y_train):
    folder.mkdir(parents=True)
    for split, y in (("train", y_train), ("test", np.arange(10))):
        n = len(y)
        np.savez(folder / f"cifar10-{split}.npz", x=np.zeros((n, 32, 32, 3), np.uint8), y=np.asarray(y, np.int64),
                 official_index=np.arange(n))


def test_a_data_file_with_labels_outside_the_classes_is_an_error_naming_it(tmp_path):
    from n2n_gym.data.datasets import load_dataset

    _cifar_npz(tmp_path / "cifar10", np.r_[np.arange(10), np.arange(10), [12]])
    with pytest.raises(ValueError, match=r"labels span 0\.\.12, outside the data set's 0\.\.9") as err:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path) in str(err.value)
