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
from .train import load_model, pick_device, train

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
    ev = config["eval"]
    device = device or pick_device(config["train"].get("device", "auto"))
    data = gdata.load(config["dataset"])
    model = load_model(run_dir, device)
    result = run_panel(
        model,
        data,
        config,
        panel=panel or ev["panel"],
        n=n or ev.get("n"),
        eps=ev.get("eps"),
        eps_l2=ev.get("eps_l2"),
        seed=ev.get("seed", 0),
        device=device,
    )
    (out_dir or run_dir).mkdir(parents=True, exist_ok=True)
    ((out_dir or run_dir) / "gallery.json").write_text(json.dumps(result.pop("gallery")))
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
