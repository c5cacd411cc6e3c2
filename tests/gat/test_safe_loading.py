"""Files under the data root or a run directory never run code: crafted model, checkpoint and CIFAR
pickle files are refused with a clear error, and the command they carry never runs."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from worker.gat import data as gdata
from worker.gat.train import CheckpointError, checkpoint_step, load_model

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_torch_file(path: Path, marker: Path) -> None:
    torch.save({"model": {}, "step": 1, "evil": Payload(marker)}, path)


def test_the_payload_is_real(tmp_path):
    """Without the guards, loading the crafted file runs the command (so the tests below mean something)."""
    marker = tmp_path / "ran"
    crafted_torch_file(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


def test_a_crafted_model_file_is_refused(tmp_path):
    marker = tmp_path / "ran"
    crafted_torch_file(tmp_path / "model.pt", marker)
    with pytest.raises(CheckpointError, match="model.pt: refused, it holds more than tensors"):
        load_model(tmp_path)
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    crafted_torch_file(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(CheckpointError, match="checkpoint.pt: refused"):
        checkpoint_step(tmp_path)
    assert not marker.exists()


def test_a_crafted_teacher_fails_the_run_with_a_clear_error_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    crafted_torch_file(teacher / "model.pt", marker)
    cfg = {
        "name": "kd",
        "scenario": "distill",
        "method": "student",
        "dataset": {"name": "synthetic", "size": 200},
        "model": {"arch": "cnn", "width": 4},
        "train": {"epochs": 1, "batch_size": 32},
        "params": {"teacher_dir": str(teacher)},
        "eval": {"panel": "none"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "labcore.cli",
            "train",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "run"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert "gatlab: error: params.teacher_dir:" in r.stderr and "refused" in r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoints_the_trainer_writes_load_safely_and_resume(tmp_path):
    cfg = {
        "name": "t",
        "scenario": "defense",
        "method": "erm",
        "dataset": {"name": "synthetic", "size": 200},
        "model": {"arch": "mlp", "width": 8},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"panel": "none"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = [
        sys.executable,
        "-m",
        "labcore.cli",
        "train",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "run"),
        "-q",
    ]
    assert subprocess.run(run, capture_output=True, timeout=300, cwd=ROOT).returncode == 0
    ckpt = torch.load(
        tmp_path / "run" / "checkpoint.pt", weights_only=True
    )  # raises if anything but tensors/containers
    assert ckpt["step"] == checkpoint_step(tmp_path / "run") > 0
    assert load_model(tmp_path / "run") is not None
    cfg["train"]["epochs"] = 2  # resume from the checkpoint (numpy's RNG state included)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2 * ckpt["step"]


def cifar100_folder(root: Path, payload=None) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 40), ("test", 20)):
        d = {
            b"data": np.random.default_rng(0).integers(0, 255, (n, 3072), dtype=np.uint8),
            b"fine_labels": [i % 100 for i in range(n)],
            b"coarse_labels": [i % 20 for i in range(n)],
        }
        if payload is not None:
            d[b"evil"] = payload
        (folder / split).write_bytes(pickle.dumps(d, protocol=2))


def test_cifar_pickles_of_arrays_load(tmp_path):
    cifar100_folder(tmp_path)
    data = gdata.load({"name": "cifar100_coarse", "data_dir": str(tmp_path)})
    assert data.input_shape == (3, 32, 32) and data.tasks["coarse"]["classes"] == 20


def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    cifar100_folder(tmp_path, Payload(marker))
    with pytest.raises(
        gdata.DataError,
        match=r"dataset.data_dir: .* is not a CIFAR pickle of arrays \(refused: "
        r"the file names posix.system",
    ):
        gdata.load({"name": "cifar100_coarse", "data_dir": str(tmp_path)})
    assert not marker.exists()


# ---- models from elsewhere: safetensors weights of a lab architecture -------------------------


def _weights(model: torch.nn.Module) -> dict:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_safetensors_weights_load_into_the_named_architecture_and_give_the_same_logits(tmp_path, digits):
    from safetensors.torch import save_file

    from tests.gat.conftest import small_cnn
    from worker.gat.job import load_external, safetensors_metadata

    model = small_cnn(digits, seed=3).eval()
    x = digits.test.images(slice(0, 16))
    cfg = {"arch": "cnn", "width": 8, "depth": 2}
    # named by the file's own metadata (as `gatlab export` writes): the config's model is not needed
    meta = {"model_config": cfg, "input_shape": list(digits.input_shape), "num_classes": 10}
    save_file(_weights(model), tmp_path / "m.safetensors", metadata=safetensors_metadata(meta))
    loaded = load_external(tmp_path / "m.safetensors", digits, torch.device("cpu"), {"arch": "mlp"})
    assert torch.equal(loaded(x), model(x))
    # a bare file: the run config's model section names the architecture
    save_file(_weights(model), tmp_path / "bare.safetensors")
    assert torch.equal(
        load_external(tmp_path / "bare.safetensors", digits, torch.device("cpu"), cfg)(x), model(x)
    )
    with pytest.raises(
        CheckpointError, match=r"do not fit cnn \(width 16\).*wrong shape.*name the architecture"
    ):
        load_external(
            tmp_path / "bare.safetensors", digits, torch.device("cpu"), {"arch": "cnn", "width": 16}
        )
    with pytest.raises(CheckpointError, match="do not fit mlp.*missing.*unexpected"):
        load_external(tmp_path / "bare.safetensors", digits, torch.device("cpu"), {"arch": "mlp"})


def test_safetensors_refused_with_a_reason(tmp_path, digits, synthetic):
    from safetensors.torch import save_file

    from tests.gat.conftest import small_cnn
    from worker.gat.job import load_external, safetensors_metadata

    cpu = torch.device("cpu")
    marker = tmp_path / "ran"
    crafted_torch_file(tmp_path / "evil.safetensors", marker)  # a pickle named .safetensors
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_external(tmp_path / "evil.safetensors", digits, cpu)
    assert not marker.exists()
    model = small_cnn(digits)
    meta = {"model_config": {"arch": "cnn", "width": 8}, "input_shape": [1, 8, 8], "num_classes": 10}
    save_file(_weights(model), tmp_path / "m.safetensors", metadata=safetensors_metadata(meta))
    with pytest.raises(CheckpointError, match=r"made for num classes 10, but this dataset has 4"):
        load_external(tmp_path / "m.safetensors", synthetic, cpu)
    without_norm = {k: v for k, v in _weights(model).items() if not k.startswith("0.")}
    save_file(without_norm, tmp_path / "nonorm.safetensors", metadata=safetensors_metadata(meta))
    with pytest.raises(CheckpointError, match=r"missing \['0.mean', '0.std'\]"):
        load_external(tmp_path / "nonorm.safetensors", digits, cpu)
    save_file(_weights(model), tmp_path / "junk.safetensors", metadata={"gatlab": "{not json"})
    with pytest.raises(CheckpointError, match="metadata is not what `gatlab export` writes"):
        load_external(tmp_path / "junk.safetensors", digits, cpu)
    with pytest.raises(CheckpointError, match="no such model file"):
        load_external(tmp_path / "absent.safetensors", digits, cpu)
