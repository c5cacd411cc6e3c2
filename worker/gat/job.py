"""A whole job: train a run config, then run its robustness panel. Shared by the CLI and the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from . import data as gdata
from .panel import run_panel
from .recorder import Recorder
from .train import CheckpointError, load_model, pick_device, train

log = logging.getLogger(__name__)


def run(
    config: dict,
    out_dir: Path,
    recorder: Recorder,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    should_hand_back: Callable[[], bool] = lambda: False,
    device: torch.device | None = None,
) -> dict:
    summary = train(
        config, out_dir, recorder, should_stop=should_stop, should_hand_back=should_hand_back, device=device
    )
    if (
        config["eval"]["panel"] != "none" and config["scenario"] != "multitask"
    ):  # the panel attacks classifiers
        summary["eval"] = evaluate_run(out_dir, config, recorder, device=device)
    return summary


def evaluate_run(
    run_dir: Path,
    config: dict,
    recorder: Recorder,
    *,
    panel: str | None = None,
    n: int | None = None,
    device: torch.device | None = None,
    out_dir: Path | None = None,
) -> dict:
    """The robustness panel on a finished run's final model; rows go to the recorder, the image
    gallery to `out_dir` (default: the run directory; a lab panel job writes into its own)."""
    device = device or pick_device(config["train"].get("device", "auto"))
    model = load_model(run_dir, device)
    return evaluate(model, config, recorder, panel=panel, n=n, device=device, out_dir=out_dir or run_dir)


def load_torchscript(path: Path, data: gdata.Data, device: torch.device) -> torch.nn.Module:
    """A model brought from elsewhere, as TorchScript (what `gatlab export` writes): images in
    [0, 1] of the dataset's shape -> logits over its classes. TorchScript is loaded without
    unpickling Python objects; a pickled model is refused, since loading it would run its code."""
    try:
        model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a TorchScript model ({str(e).splitlines()[0][:200]}); write one with `gatlab export`"
            " or torch.jit.script/trace. Pickled models are refused: loading one would run its code."
        ) from None
    x = data.test.images(slice(0, 2)).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: the model fails on images of shape {tuple(x.shape[1:])} from this dataset:"
            f" {str(e).splitlines()[0][:300]}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"{path}: on a batch of 2 images of shape {tuple(x.shape[1:])} the model returned {shape};"
            f" the panel needs logits of shape (2, {data.num_classes})"
        )
    return model


def evaluate_model(
    model_file: Path, config: dict, recorder: Recorder, *, device: torch.device, out_dir: Path
) -> dict:
    """The panel on a TorchScript model from elsewhere (`config["eval"]["model_path"]`)."""
    data = gdata.load(config["dataset"])
    model = load_torchscript(model_file, data, device)
    return evaluate(model, config, recorder, device=device, out_dir=out_dir, data=data)


def evaluate(
    model: torch.nn.Module,
    config: dict,
    recorder: Recorder,
    *,
    device: torch.device,
    out_dir: Path,
    panel: str | None = None,
    n: int | None = None,
    data: gdata.Data | None = None,
) -> dict:
    ev = config["eval"]
    result = run_panel(
        model,
        data or gdata.load(config["dataset"]),
        config,
        panel=panel or ev["panel"],
        n=n or ev.get("n"),
        eps=ev.get("eps"),
        eps_l2=ev.get("eps_l2"),
        seed=ev.get("seed", 0),
        device=device,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gallery.json").write_text(json.dumps(result.pop("gallery")))
    failed = [c["name"] for c in result["checks"] if not c["passed"]]
    log.log(
        logging.WARNING if failed else logging.INFO,
        "panel %s on %d examples in %.0f s; failed checks: %s",
        result["panel"],
        result["n"],
        result["seconds"],
        failed or "none",
    )
    recorder.evaluation(result)
    return result
