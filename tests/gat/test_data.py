import numpy as np
import pytest

from worker.gat.data import DataError, load


def test_digits_split_is_fixed_and_in_unit_range():
    a, b = load({"name": "digits"}), load({"name": "digits"})
    assert a.info["train_hash"] == b.info["train_hash"]
    assert load({"name": "digits", "split_seed": 1}).info["train_hash"] != a.info["train_hash"]
    x = a.train.images()
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797


def test_fraction_shrinks_only_the_training_split():
    full, tenth = load({"name": "digits"}), load({"name": "digits", "fraction": 0.1})
    assert len(tenth.train) == round(len(full.train) * 0.1)
    assert tenth.test.y.tolist() == full.test.y.tolist()


@pytest.mark.parametrize("shape,dtype,scale", [((50, 8, 8), np.uint8, 255), ((50, 3, 6, 6), np.float32, 1.0)])
def test_npz_loads(tmp_path, shape, dtype, scale):
    rng = np.random.default_rng(0)
    x = (rng.random(shape) * scale).astype(dtype)
    y = np.arange(50) % 3
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, parity=y % 2)
    d = load({"name": "npz", "path": str(p)})
    assert d.num_classes == 3 and "parity" in d.train.extra
    assert d.train.images().max() <= 1.0


BAD = {
    "no_y": ({"x": np.zeros((4, 8, 8), np.uint8)}, "has no array 'y'"),
    "flat_x": ({"x": np.zeros((4, 64)), "y": np.zeros(4, int)}, "N x H x W or N x C x H x W"),
    "float_out_of_range": ({"x": np.full((4, 8, 8), 3.0), "y": np.zeros(4, int)}, r"\[0, 1\]"),
    "bad_dtype": ({"x": np.zeros((4, 8, 8), np.int32), "y": np.zeros(4, int)}, "dtype must be uint8"),
    "label_count": (
        {"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)},
        "expected a 1-D array of 4 labels",
    ),
    "float_labels": ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4)}, "non-negative integers"),
    "channels_last": ({"x": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros(4, int)}, "1 or 3 channels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_npz_gives_a_clear_error(tmp_path, case):
    arrays, msg = BAD[case]
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=msg):
        load({"name": "npz", "path": str(p)})


def test_missing_and_corrupt_npz(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load({"name": "npz", "path": str(tmp_path / "nope.npz")})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load({"name": "npz", "path": str(tmp_path / "junk.npz")})


def test_torchvision_set_missing_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="download: true"):
        load({"name": "mnist", "data_dir": str(tmp_path), "download": False})


def test_multidigits_from_an_npz_source(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "src.npz", x=(rng.random((40, 14, 14)) * 255).astype(np.uint8), y=np.arange(40) % 10)
    d = load({"name": "multidigits", "path": str(tmp_path / "src.npz")})
    assert list(d.tasks) == ["left", "right"] and d.input_shape == (1, 18, 18)  # shift 14 * 2 // 7 = 4


def test_cifar100_with_coarse_labels_reads_the_python_pickles(tmp_path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 20)):
        d = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(rng.integers(0, 100, n)),
            b"coarse_labels": list(rng.integers(0, 20, n)),
        }
        (folder / split).write_bytes(pickle.dumps(d))
    data = load({"name": "cifar100_coarse", "data_dir": str(tmp_path)})
    assert data.input_shape == (3, 32, 32) and len(data.test) == 20
    assert set(data.tasks) == {"fine", "coarse"} and data.tasks["coarse"]["kind"] == "cls"
    with pytest.raises(DataError, match="download: true"):
        load({"name": "cifar100_coarse", "data_dir": str(tmp_path / "empty")})


def _sources(split, h: int, w: int, shift: int) -> tuple[set, set]:
    """The source ids of each pair's left and right image: source i is the constant image (i + 1)
    / 4096, read at a corner only its own image covers (left: top left, right: bottom right)."""
    left = (split.x[:, 0, 0, 0].double() * 4096).round().long() - 1
    right = (split.x[:, 0, h + shift - 1, w + shift - 1].double() * 4096).round().long() - 1
    return set(left.tolist()), set(right.tolist())


def test_multidigits_pairs_are_built_within_each_split_so_no_test_digit_is_trained_on(tmp_path):
    """The source images are split first and pairs drawn within each split: no test or validation
    pair shares a source image, left or right, with a training pair (pairing all images first put
    the left digit of 424 of 600 test pairs into training pairs too)."""
    n, h = 1000, 14
    x = ((np.arange(n) + 1) / 4096).astype(np.float32)[:, None, None] * np.ones((1, h, h), np.float32)
    np.savez(tmp_path / "src.npz", x=x, y=np.arange(n) % 10)
    d = load({"name": "multidigits", "path": str(tmp_path / "src.npz")})
    shift = max(2, h * 2 // 7)
    train = set().union(*_sources(d.train, h, h, shift))
    for split in (d.test, d.val):
        assert len(split) > 0
        assert not set().union(*_sources(split, h, h, shift)) & train
    assert (len(d.train), len(d.val), len(d.test)) == (2160, 240, 600)  # 3000 pairs, as before
