"""Readers for the standard dataset files, with a download cache and checksum verification.

A data directory holds one folder per dataset (``DIR/mnist/train-images-idx3-ubyte.gz``, ...).  It is, in
order: the ``data_dir`` argument (``--data-dir``), the ``LEARNED_TORCH_OPTIM_DATA`` environment variable, or the
user cache ``~/.cache/learned_torch_optim/data``, where missing files are downloaded.  Every file read is checked
by sha256: against the standard file's, or against the folder's ``SHA256SUMS`` (``sha256sum`` output) where it
lists the file, for data of one's own in a standard format.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import re
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write, cache_root

DATA_ENV = "LEARNED_TORCH_OPTIM_DATA"
CHECKSUMS = "SHA256SUMS"
"""A dataset folder's own list of sha256 sums, which takes precedence over the standard files' for the files it
lists."""

_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

DATASETS: dict[str, dict] = {
    "mnist": {
        "urls": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        "sha256": {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        "splits": _IDX_SPLITS,
    },
    # The first 5,000 training and first 1,000 test images of MNIST, in the official files' format: shipped with the
    # package (bundled/mnist-subset, with its NOTICE), built by tools/build_mnist_subset.py.
    "mnist-subset": {
        "urls": [],
        "sha256": {
            "train-images-idx3-ubyte.gz": "8d1eae75b5aff396cd29c4ac1bf9940059221ef7e568d080f6699358bfad60c3",
            "train-labels-idx1-ubyte.gz": "183f0d6e1c50136e698f8b78509f7a351c300f33cb73b17cf97a81d900371324",
            "t10k-images-idx3-ubyte.gz": "c38842f3fc122aeb56961328eacf41c4315fb33e95ce0e9d0c97f3bd3d5b62c6",
            "t10k-labels-idx1-ubyte.gz": "689b4d1da0ae1049125d2f91e157009a132a2a1e76b45a178dc0b359e1f74255",
        },
        "splits": _IDX_SPLITS,
    },
    "fashion-mnist": {
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "sha256": {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        "splits": _IDX_SPLITS,
    },
    # The first 4,000 / 1,000 records of CIFAR-10's data_batch_1 / test_batch in the binary record format; a
    # subset with no canonical download, so it must be put in place by hand.
    "cifar10-subset": {
        "urls": [],
        "sha256": {
            "data_batch_1_first4000.bin": "0993cf8b8e43bc207603aef9787006995746513f5e3fa5a52e06d1b069926330",
            "test_batch_first1000.bin": "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
        },
        "splits": {"train": ("data_batch_1_first4000.bin",), "test": ("test_batch_first1000.bin",)},
    },
    # All 50,000 training and 10,000 test images of CIFAR-10 as 32x32 JPEG files (lossy: the pixels are not the
    # originals) in one stored zip, named train/<class>/<NNNN>.jpg and test/<class>/<NNNN>.jpg; no canonical
    # download, so it must be put in place by hand.
    "cifar10-jpeg": {
        "urls": [],
        "sha256": {"cifar10_jpeg.zip": "0800b0020976bdd9abe8b4aa3f601f02deb7f237014a3a50474397ec01c4a422"},
        "splits": {"train": ("cifar10_jpeg.zip",), "test": ("cifar10_jpeg.zip",)},
    },
    # MNIST-1D's default data set as .npz (upstream distributes a pickle, which is never loaded here).
    "mnist1d": {
        "urls": [],
        "sha256": {"mnist1d_data.npz": "b1adc2b5206f50ab6f7dea5e16da94cabd5294c20563a6f631ab3615a9cb2e10"},
        "splits": {"train": ("mnist1d_data.npz",), "test": ("mnist1d_data.npz",)},
    },
    "tinyshakespeare": {
        "urls": ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"],
        "sha256": {"input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
        "splits": {"train": ("input.txt",), "test": ("input.txt",)},
    },
}
"""The standard datasets: download URLs, the sha256 of each file, and the files each split reads
(:func:`dataset_files`)."""

_CIFAR_RECORD = 1 + 3 * 32 * 32


class DataNotFoundError(FileNotFoundError):
    """A dataset file is neither in the data directory nor downloadable; the message says where to put it."""


class DataChecksumError(ValueError):
    """A dataset file whose sha256 is not the expected one; the message names the file and says what to do."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/learned_torch_optim/data``, by default ``~/.cache/learned_torch_optim/data``."""
    return cache_root() / "data"


def dataset_files(dataset: str, split: str) -> tuple[str, ...]:
    """The names of the files of ``dataset`` that its ``split`` (``train`` or ``test``) reads."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    _check_split(split)
    return DATASETS[dataset]["splits"][split]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else ``$LEARNED_TORCH_OPTIM_DATA``, else the user cache."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return default_cache_dir()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_sha256(dataset: str, path: Path) -> tuple[str, str]:
    """The sha256 ``path`` must have, and where it is from: the folder's ``SHA256SUMS``, else the standard file's."""
    sums = path.parent / CHECKSUMS
    if sums.is_file():
        for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            digest, _, name = line.strip().partition(" ")
            if name.lstrip(" *") != path.name:
                continue
            if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest.lower()):
                raise DataChecksumError(f"{sums}, line {number}: {digest!r} is not a sha256 in hex; correct it")
            return digest.lower(), f"listed in {sums}"
    return DATASETS[dataset]["sha256"][path.name], f"that of the standard {dataset} file"


def _check_sha256(dataset: str, path: Path) -> None:
    """Raise :class:`DataChecksumError` unless ``path`` has its expected sha256 (see :func:`_expected_sha256`)."""
    expected, source = _expected_sha256(dataset, path)
    actual = _sha256(path)
    if actual != expected:
        again = ", or delete it to have it downloaded into the cache" if DATASETS[dataset]["urls"] else ""
        raise DataChecksumError(
            f"{path}: sha256 {actual} is not {expected}, {source}; the file is truncated, damaged or another one. "
            f"Replace it with the standard file{again}; for data of your own in this format, list its sha256 in "
            f"{path.parent / CHECKSUMS} (as sha256sum prints it)"
        )


def _download(dataset: str, file_name: str, target: Path) -> str | None:
    """Download a standard file to ``target``; ``None`` when done, else why not."""
    expected = DATASETS[dataset]["sha256"][file_name]
    errors = []
    for base in DATASETS[dataset]["urls"]:
        try:
            with urllib.request.urlopen(base + file_name, timeout=30) as response:
                payload = response.read()
        except OSError as error:
            errors.append(f"{base + file_name}: {error}")
            continue
        if hashlib.sha256(payload).hexdigest() != expected:
            errors.append(f"{base + file_name}: sha256 mismatch")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda handle, data=payload: handle.write(data), "wb")
        return None
    return "; ".join(errors) if errors else "it has no stable download URL"


def dataset_file(dataset: str, file_name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of a standard dataset file, checked by sha256: in the data directory, else in the cache, where it is
    downloaded when absent."""
    path = resolve_data_dir(data_dir) / dataset / file_name
    cached = default_cache_dir() / dataset / file_name
    for found in (path, cached):
        if found.is_file():
            _check_sha256(dataset, found)
            return found
    reason = _download(dataset, file_name, cached)
    if reason is None:
        return cached
    where = f"neither at {path} nor at {cached}" if path != cached else f"not at {path}"
    raise DataNotFoundError(
        f"{dataset} file {file_name} is {where} and could not be downloaded ({reason}). Put the standard "
        f"file at {path}, or pass --data-dir DIR (or set {DATA_ENV}) where DIR/{dataset}/{file_name} exists."
    )


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (optionally gzip-compressed): big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path}: not a whole gzip file ({type(error).__name__}: {error}); replace it with the standard file"
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


@functools.lru_cache(maxsize=8)
def load_image_classification(
    dataset: str, split: str, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of an IDX dataset (``mnist`` or ``fashion-mnist``): float32 pixels in [0, 1] of shape
    ``(N, 28, 28)`` and int64 labels."""
    images_name, labels_name = dataset_files(dataset, split)
    images = read_idx(dataset_file(dataset, images_name, data_dir))
    labels = read_idx(dataset_file(dataset, labels_name, data_dir))
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def load_mnist_subset(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the MNIST subset shipped with the package, checked by sha256 (``train``: the first
    5,000 training images of MNIST, ``test``: its first 1,000 test images), as :func:`load_image_classification`
    returns them."""
    return load_image_classification("mnist-subset", split, str(Path(__file__).with_name("bundled")))


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")


def read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a CIFAR-10 binary batch: records of one label byte then 3,072 pixel bytes (R, G, B planes of 32x32,
    row-major).  Returns ``(images, labels)``: uint8 of shape ``(N, 3, 32, 32)`` and ``(N,)``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR records")
    records = raw.reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].copy()


@functools.lru_cache(maxsize=4)
def load_cifar10_subset(split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the CIFAR-10 subset (``train``: 4,000 images, ``test``: 1,000): float32 pixels in
    [0, 1] of shape ``(N, 3, 32, 32)`` and int64 labels 0..9."""
    (file_name,) = dataset_files("cifar10-subset", split)
    images, labels = read_cifar_binary(dataset_file("cifar10-subset", file_name, data_dir))
    if labels.max() > 9:
        raise ValueError(f"{file_name}: label {labels.max()} out of range 0..9")
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""CIFAR-10's class names, label k at index k (the folder names of ``cifar10-jpeg``)."""
_JPEG_MEMBER = re.compile(r"(train|test)/([a-z]+)/(\d{1,6})\.jpg")
_MAX_JPEG_MEMBERS = 100_000
_MAX_JPEG_BYTES = 64 * 1024
"""Bounds on ``cifar10_jpeg.zip``: how many members it may list, how large one JPEG may be."""


@functools.lru_cache(maxsize=2)
def load_cifar10_jpeg(split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the JPEG copy of all of CIFAR-10 (``train``: 50,000 images, ``test``: 10,000), as
    :func:`load_cifar10_subset` returns them, ordered by label then by the number in the file name.  Decoding needs
    Pillow.  Each member must be a JPEG of at most 64 KiB named ``SPLIT/CLASS/NUMBER.jpg`` that decodes to 32x32
    RGB; anything else is an error naming it."""
    _check_split(split)
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("reading cifar10-jpeg needs Pillow: pip install pillow") from error
    path = dataset_file("cifar10-jpeg", "cifar10_jpeg.zip", data_dir)
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > _MAX_JPEG_MEMBERS:
            raise ValueError(f"{path}: {len(members)} members, more than the {_MAX_JPEG_MEMBERS} allowed")
        found = []
        for member in members:
            match = _JPEG_MEMBER.fullmatch(member.filename)
            if member.is_dir():
                continue
            if match is None or match[2] not in CIFAR10_CLASSES:
                raise ValueError(f"{path}: unexpected member {member.filename!r} (want SPLIT/CLASS/NUMBER.jpg)")
            if match[1] == split:
                found.append((CIFAR10_CLASSES.index(match[2]), int(match[3]), member))
        found.sort(key=lambda item: item[:2])
        images = np.empty((len(found), 32, 32, 3), dtype=np.uint8)
        for index, (_, _, member) in enumerate(found):
            if member.file_size > _MAX_JPEG_BYTES:
                raise ValueError(f"{path}: {member.filename} is {member.file_size} bytes, over {_MAX_JPEG_BYTES}")
            with archive.open(member) as handle, Image.open(io.BytesIO(handle.read(_MAX_JPEG_BYTES + 1))) as image:
                if image.format != "JPEG" or image.size != (32, 32):
                    raise ValueError(f"{path}: {member.filename} is not a 32x32 JPEG ({image.format}, {image.size})")
                images[index] = np.asarray(image.convert("RGB"))
    if not found:
        raise ValueError(f"{path}: no {split} images")
    labels = np.array([label for label, _, _ in found], dtype=np.int64)
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0), torch.from_numpy(labels)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive, read with ``allow_pickle=False`` (object arrays are refused)."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@functools.lru_cache(maxsize=4)
def load_mnist1d(split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of MNIST-1D's default data set (``train``: 4,000, ``test``: 1,000 sequences): float32 of shape
    ``(N, 40)`` and int64 labels 0..9, from ``mnist1d/mnist1d_data.npz`` (arrays ``x``, ``y``, ``x_test``,
    ``y_test``)."""
    _check_split(split)
    arrays = read_npz(dataset_file("mnist1d", "mnist1d_data.npz", data_dir))
    x_key, y_key = ("x", "y") if split == "train" else ("x_test", "y_test")
    missing = {x_key, y_key} - set(arrays)
    if missing:
        raise ValueError(f"mnist1d_data.npz lacks the arrays {sorted(missing)}")
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"mnist1d_data.npz: {x_key} {x.shape} and {y_key} {y.shape} do not match")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


@functools.lru_cache(maxsize=4)
def load_text(split: str, data_dir: str | None = None, dataset: str = "tinyshakespeare") -> tuple[torch.Tensor, str]:
    """``(tokens, vocabulary)`` of a character-level corpus (``DIR/<dataset>/input.txt``): the vocabulary is the
    sorted set of characters of the whole text, ``tokens`` the int64 indices of the first 90% of the characters
    (``train``) or of the last 10% (``test``)."""
    _check_split(split)
    text = dataset_file(dataset, "input.txt", data_dir).read_text(encoding="utf-8")
    vocabulary = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocabulary), default=0) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    boundary = int(0.9 * len(codes))
    part = codes[:boundary] if split == "train" else codes[boundary:]
    return torch.from_numpy(lookup[part]), vocabulary
