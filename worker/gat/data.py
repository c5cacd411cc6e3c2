"""Datasets: scikit-learn digits, a synthetic set, user .npz files and torchvision sets.

Every source becomes uint8 or float tensors of shape N x C x H x W with integer labels. Images
reach the model in [0, 1]; the per-channel mean and std travel with the data so that the model
normalises inside itself (attacks then work in pixel space). Splits are fixed by `split_seed`
and recorded as index hashes, independent of the training seed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset that cannot be loaded, with a message meant for the user."""


@dataclass
class Split:
    x: torch.Tensor  # N x C x H x W, uint8 (0-255) or float (0-1)
    y: torch.Tensor  # N, int64
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # extra targets, N each

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], {k: v[idx] for k, v in self.extra.items()})


@dataclass
class Data:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: list[float]
    std: list[float]
    info: dict = field(default_factory=dict)
    # task name -> {"kind": "cls", "classes": K} or {"kind": "reg"}; the first is `y`
    tasks: dict[str, dict] = field(default_factory=dict)

    def targets(self, split: Split, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """All task targets of a batch: the primary task from y, the others from extra."""
        first = next(iter(self.tasks))
        return {t: split.y[idx] if t == first else split.extra[t][idx] for t in self.tasks}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


# Standard L-inf and L2 radii per source: MNIST-like 0.3, colour sets 8/255 and 0.5 (docs/design.md section 4).
# Digits are 8x8 with 17 grey levels, far coarser than MNIST; 0.1 is our own choice there.
STANDARD_EPS = {
    "digits": (0.1, 0.5),
    "synthetic": (0.1, 0.5),
    "npz": (0.1, 0.5),
    "digits_mt": (0.1, 0.5),
    "multidigits": (0.1, 0.5),
    "multimnist": (0.3, 2.0),
    "cifar100_coarse": (8 / 255, 0.5),
    "mnist": (0.3, 2.0),
    "fashion_mnist": (0.1, 1.0),
    "cifar10": (8 / 255, 0.5),
    "cifar100": (8 / 255, 0.5),
    "svhn": (8 / 255, 0.5),
}


def load(cfg: dict) -> Data:
    """Load the dataset a run config's `dataset` section describes."""
    name = cfg["name"]
    val = None  # given apart only where pairs are built within each split
    if name == "digits":
        x, y, extra, test = *_digits(), None
    elif name == "synthetic":
        x, y, extra, test = *_synthetic(cfg.get("size", 600), cfg.get("split_seed", 0)), None
    elif name == "npz":
        x, y, extra, test = *load_npz(cfg.get("path")), None
    elif name == "digits_mt":
        x, y, extra, test = *_digits_mt(), None
    elif name == "multidigits":  # from scikit-learn's digits, or from any MNIST-like .npz given as path
        x, y, _ = load_npz(cfg["path"]) if cfg.get("path") else _digits()
        shift = max(2, x.shape[-1] * 2 // 7) if cfg.get("path") else 4
        (x, y, extra), val, test = paired_splits(x, y, max(3000, len(y)), shift=shift, cfg=cfg)
    elif name == "cifar100_coarse":
        (x, y, extra), test = _cifar100_coarse(Path(cfg.get("data_dir", "data")), cfg.get("download", False))
    elif name == "multimnist":
        (x, y), (xt, yt) = _torchvision(
            "mnist", Path(cfg.get("data_dir", "data")), cfg.get("download", False)
        )
        (x, y, extra), val, test = paired_splits(x, y, 70_000, shift=8, cfg=cfg, test=(xt, yt, 10_000))
    else:
        (x, y), test = _torchvision(name, Path(cfg.get("data_dir", "data")), cfg.get("download", False))
        extra = {}
    data = _split(name, x, y, extra, test, cfg, val=val)
    data.tasks = _tasks(name, data)
    data.info["tasks"] = data.tasks
    return data


_PRIMARY = {"digits_mt": "digit", "multidigits": "left", "multimnist": "left", "cifar100_coarse": "fine"}


def _tasks(name: str, data: Data) -> dict[str, dict]:
    tasks = {_PRIMARY.get(name, "y"): {"kind": "cls", "classes": data.num_classes}}
    for k, v in data.train.extra.items():
        if v.dtype.is_floating_point:
            tasks[k] = {"kind": "reg"}
        else:
            tasks[k] = {"kind": "cls", "classes": int(max(v.max(), data.test.extra[k].max())) + 1}
    return tasks


def _digits() -> tuple[torch.Tensor, torch.Tensor, dict]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N x 1 x 8 x 8
    return x, torch.tensor(d.target, dtype=torch.int64), {}


def _digits_mt() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Digits with four tasks: the digit, its parity, "greater than four", and the image's mean
    intensity (a regression target, standardised)."""
    x, y, _ = _digits()
    intensity = x.mean(dim=(1, 2, 3))
    extra = {
        "parity": y % 2,
        "gt4": (y > 4).long(),
        "intensity": (intensity - intensity.mean()) / intensity.std(),
    }
    return x, y, extra


def _overlay(x: torch.Tensor, y: torch.Tensor, n: int, *, shift: int, seed: int):
    """MultiMNIST-style pairs: one image at the top left, another shifted by `shift` pixels to the
    bottom right, merged by maximum; tasks `left` (= y) and `right`."""
    g = torch.Generator().manual_seed(10_007 + seed)
    i, j = torch.randint(0, len(y), (n,), generator=g), torch.randint(0, len(y), (n,), generator=g)
    _, c, h, w = x.shape
    canvas = torch.zeros(n, c, h + shift, w + shift, dtype=x.dtype)
    canvas[:, :, :h, :w] = x[i]
    canvas[:, :, shift:, shift:] = torch.maximum(canvas[:, :, shift:, shift:], x[j])
    return canvas, y[i], {"right": y[j]}


def paired_splits(x, y, n: int, *, shift: int, cfg: dict, test: tuple | None = None):
    """Pairs of `_overlay` built within each split of the source images, never across: the source
    is split first into test (unless `test` = (images, labels, pairs) is given apart), validation
    and training images, then each split's pairs are drawn from its own images only, so no test or
    validation pair shares a digit image with a training pair. `n` pairs in all, shared by the
    config's test_fraction and val_fraction. Returns (train, val, test), each (x, y, extra)."""
    seed, tf, vf = cfg.get("split_seed", 0), cfg.get("test_fraction", 0.2), cfg.get("val_fraction", 0.1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if test is None:
        k = max(1, int(round(len(y) * tf)))
        n_test = max(1, int(round(n * tf)))
        test = (x[perm[:k]], y[perm[:k]], n_test)
        perm = perm[k:]
    xt, yt, n_test = test
    pairs_test = _overlay(xt, yt, n_test, shift=shift, seed=seed + 1)
    k = int(round(len(perm) * vf))
    n_rest = n - n_test
    n_val = int(round(n_rest * vf)) if k else 0
    val_src, train_src = perm[:k], perm[k:]
    pairs_val = _overlay(x[val_src], y[val_src], n_val, shift=shift, seed=seed + 2)
    pairs_train = _overlay(x[train_src], y[train_src], n_rest - n_val, shift=shift, seed=seed)
    return pairs_train, pairs_val, pairs_test


def _synthetic(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Four classes of noisy 8x8 prototypes: learnable in a few steps, for tests."""
    g = torch.Generator().manual_seed(1234 + seed)
    protos = torch.rand(4, 1, 8, 8, generator=g)
    y = torch.arange(size) % 4
    x = (protos[y] + 0.25 * torch.randn(size, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y, {}


def load_npz(path: str | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read `x` (N x H x W or N x C x H x W; uint8 0-255 or float 0-1), `y` and extra targets."""
    if not path:
        raise DataError("dataset.path: an npz dataset needs a path to a .npz file")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset.path: no such file: {path}")
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # any unreadable file is a user error here
        raise DataError(f"dataset.path: {path} is not a readable .npz file ({e})") from e
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"dataset.path: {path} has no array '{key}' (found: {sorted(arrays)})")
    x, y = arrays.pop("x"), arrays.pop("y")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"npz x: expected N x H x W or N x C x H x W, got shape {x.shape}")
    if x.shape[1] not in (1, 3):
        raise DataError(f"npz x: expected 1 or 3 channels in axis 1 (N x C x H x W), got shape {x.shape}")
    if x.dtype == np.uint8:
        xt = torch.from_numpy(x.copy())
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError("npz x: float images must be finite and lie in [0, 1]")
        xt = torch.from_numpy(x.astype(np.float32))
    else:
        raise DataError(f"npz x: dtype must be uint8 (0-255) or float (0-1), got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"npz y: expected a 1-D array of {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError("npz y: labels must be non-negative integers")
    extra = {}
    for k, v in arrays.items():
        if v.shape[:1] != (len(x),):
            raise DataError(f"npz {k}: extra targets need one value per example, got shape {v.shape}")
        extra[k] = torch.from_numpy(np.ascontiguousarray(v))
    return xt, torch.from_numpy(y.astype(np.int64)), extra


_TV = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
}


def _torchvision(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV[name])
    out = []
    for train in (True, False):
        try:
            if name == "svhn":
                ds = cls(str(root), split="train" if train else "test", download=download)
            else:
                ds = cls(str(root), train=train, download=download)
        except RuntimeError as e:
            raise DataError(
                f"dataset.name: {name} is not in data_dir {root} ({e}); set dataset.download: true "
                "to allow downloading it"
            ) from e
        x = torch.as_tensor(np.asarray(ds.data))
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.shape[-1] == 3:  # CIFAR stores N x H x W x C
            x = x.permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(np.asarray(getattr(ds, "targets", None) if name != "svhn" else ds.labels))
        out.append((x, y.long()))
    return out[0], out[1]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles builtin containers, numbers, strings, bytes and numpy arrays, nothing else: a
    pickle naming any other callable (os.system, builtins.eval, ...) is refused before it runs."""

    ALLOWED = {
        *(
            (f"numpy.{core}.multiarray", name)
            for core in ("core", "_core")
            for name in ("_reconstruct", "scalar")
        ),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes this way
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused: the file names {module}.{name}, which is not array data")
        return super().find_class(module, name)


def load_array_pickle(path: Path) -> object:
    """A python pickle of arrays (CIFAR's format) read without running code from the file."""
    try:
        return _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"dataset.data_dir: {path} is not a CIFAR pickle of arrays ({e})") from e


def _cifar100_coarse(root: Path, download: bool):
    """CIFAR-100 with two tasks, the fine label (100) and the coarse superclass (20), read from
    the python pickles of torchvision's layout (root/cifar-100-python/{train,test})."""
    folder = root / "cifar-100-python"
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"dataset.name: cifar100_coarse is not in data_dir {root}; set dataset.download: true "
                "to allow downloading CIFAR-100"
            )
        _torchvision("cifar100", root, True)
    out = []
    for split in ("train", "test"):
        d = load_array_pickle(folder / split)
        if not isinstance(d, dict) or not {b"data", b"fine_labels", b"coarse_labels"} <= d.keys():
            raise DataError(f"dataset.data_dir: {folder / split} lacks CIFAR-100's data and labels")
        x = torch.from_numpy(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        out.append((x, torch.tensor(d[b"fine_labels"]), {"coarse": torch.tensor(d[b"coarse_labels"])}))
    return out[0], out[1]


def _split(name, x, y, extra, test, cfg, val: tuple | None = None) -> Data:
    """Test (unless given), validation (unless given) and training splits of x, y and extra."""
    g = torch.Generator().manual_seed(cfg.get("split_seed", 0))
    perm = torch.randperm(len(y), generator=g)
    pool = Split(x, y, extra)
    if test is None:
        n_test = max(1, int(round(len(y) * cfg.get("test_fraction", 0.2))))
        test_split, perm = pool.subset(perm[:n_test]), perm[n_test:]
    else:
        test_split = Split(*test) if len(test) == 3 else Split(test[0], test[1])
    n_val = 0 if val is not None else int(round(len(perm) * cfg.get("val_fraction", 0.1)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    n_train = max(1, int(round(len(train_idx) * cfg.get("fraction", 1.0))))
    train_idx = train_idx[:n_train]
    num_classes = int(max(y.max(), test_split.y.max())) + 1
    train = pool.subset(train_idx)
    imgs = train.images()
    mean = imgs.mean(dim=(0, 2, 3)).tolist()
    std = imgs.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    val_split = Split(*val) if val is not None else pool.subset(val_idx)
    info = {
        "n_train": len(train_idx),
        "n_val": len(val_split),
        "n_test": len(test_split),
        "train_hash": _hash(train_idx),
        "val_hash": _hash(val_idx),
        "input_shape": list(x.shape[1:]),
        "num_classes": num_classes,
    }
    return Data(name, train, val_split, test_split, num_classes, mean, std, info)


def _hash(idx: torch.Tensor) -> str:
    return hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:12]


def batches(
    split: Split, batch_size: int, *, shuffle: bool, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (indices, images in [0, 1], labels); the order depends only on `seed`."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield idx, split.images(idx), split.y[idx]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per example (CIFAR-style)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out
