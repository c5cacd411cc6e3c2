"""The sandbox of models from elsewhere (issue 27, findings 1 and 5): TorchScript payloads that read
a file outside their inputs, write one, loop forever or allocate without bound do nothing outside
the child process, and the evaluation ends with a clear message. Each payload is also run without
isolation, where it does what it says: the test would fail if the sandbox did not hold."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from labcore.run_config import parse_run_config
from worker.gat import sandbox

from . import payloads
from .conftest import fit_erm

pytestmark = pytest.mark.slow  # bubblewrap children evaluating models

CPU = torch.device("cpu")
CONFIG = {
    "name": "ext",
    "scenario": "defense",
    "method": "erm",
    "dataset": {"name": "digits"},
    "model": {},
    "train": {},
    "eval": {"panel": "quick", "n": 20, "seed": 0},
}


def export_config(raw: dict) -> dict:
    return parse_run_config(raw).model_dump(mode="json")


def run(model_file, digits, *, isolate=True, time_limit_s=120.0, should_stop=lambda: False, mb=4096):
    return sandbox.evaluate(
        model_file, export_config(CONFIG), digits, device=CPU, isolate=isolate, time_limit_s=time_limit_s,
        memory_bytes=mb << 20, should_stop=should_stop,
    )  # fmt: skip


def test_a_model_cannot_read_a_file_outside_its_inputs(digits, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET!")
    model = payloads.save(payloads.Reader(str(secret)), tmp_path / "reader.pt")
    with pytest.raises(sandbox.SandboxError, match="the model fails on images"):
        run(model, digits)
    result, _ = run(model, digits, isolate=False)  # unsandboxed, it reads the file and answers
    assert result["n"] == 20


def test_a_model_cannot_write_a_file_outside_its_inputs(digits, tmp_path):
    victim = tmp_path / "run.log"
    victim.write_text("another user's log\n")
    model = payloads.save(payloads.Writer(str(victim), 8), tmp_path / "writer.pt")
    try:
        run(model, digits)  # it writes what it can see: its own scratch files
    except sandbox.SandboxError:
        pass
    assert victim.read_text() == "another user's log\n"
    run(model, digits, isolate=False)  # unsandboxed, it overwrites the file
    assert victim.read_text().startswith("XXXXXXXX")


def test_a_model_that_never_returns_is_killed_at_the_time_limit_and_on_cancel(digits, tmp_path):
    model = payloads.save(payloads.Forever(), tmp_path / "forever.pt")
    t = time.monotonic()
    with pytest.raises(sandbox.TimeLimit, match="time limit of 8 s"):
        run(model, digits, time_limit_s=8)
    assert time.monotonic() - t < 30
    cancel = threading.Event()
    threading.Timer(6, cancel.set).start()
    t = time.monotonic()
    with pytest.raises(InterruptedError):
        run(model, digits, should_stop=cancel.is_set)
    assert time.monotonic() - t < 30


def test_a_model_that_allocates_without_bound_fails_in_its_child(digits, tmp_path):
    model = payloads.save(payloads.Hungry(), tmp_path / "hungry.pt")
    with pytest.raises(sandbox.SandboxError, match="allocate|memory"):
        run(model, digits, mb=2048)


def test_an_honest_model_is_judged_in_the_sandbox_as_in_the_worker(digits, tmp_path):
    """The same panel, byte for byte, whether the model runs in the sandbox or in this process."""
    from worker.gat.job import evaluate

    model = fit_erm(digits, epochs=3)
    path = tmp_path / "honest.pt"
    torch.jit.trace(model, digits.test.images(slice(0, 2))).save(str(path))
    result, images = run(path, digits)

    class Keep:
        def evaluation(self, r):
            self.r = r

    keep = Keep()
    here = evaluate(
        torch.jit.load(str(path)), export_config(CONFIG), keep, device=CPU, out_dir=tmp_path, data=digits
    )
    for key in ("rows", "checks", "clean_accuracy", "subset_hash", "n"):
        assert result[key] == here[key], key
    assert set(images) >= {"clean", "adv", "delta"}
