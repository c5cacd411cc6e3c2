"""A whole job: train a run config, then run its robustness panel. Shared by the CLI and the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors_file
from torch import nn

from . import data as gdata
from . import models, sandbox, scenarios
from .panel import run_panel
from .recorder import Recorder
from .train import CheckpointError, Stopped, load_model, pick_device, train

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """What a run leaves: its summary (as summary.json holds it) and its panel's result, if it ran one."""

    summary: dict
    panel: dict | None


def run(
    config: dict,
    out_dir: Path,
    recorder: Recorder,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    should_hand_back: Callable[[], bool] = lambda: False,
    device: torch.device | None = None,
) -> Outcome:
    summary = train(
        config, out_dir, recorder, should_stop=should_stop, should_hand_back=should_hand_back, device=device
    )
    attacked = config["eval"]["panel"] != "none" and scenarios.of(config).attacked
    return Outcome(summary, evaluate_run(out_dir, config, recorder, device=device) if attacked else None)


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


def load_external(
    path: Path, data: gdata.Data, device: torch.device, model_cfg: dict | None = None
) -> nn.Module:
    """A model brought from elsewhere, judged on `data`: a TorchScript file (any architecture, as
    `gatlab export` writes) or, for a `.safetensors` file, weights of one of the lab's architectures.
    Neither format runs Python from the file; a pickled model is refused."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        model = load_safetensors(path, data, device, model_cfg or {})
    else:
        model = load_torchscript(path, device)
    x = data.test.images(slice(0, 2)).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        why = lines[0][:300] + (
            f" ... {lines[-1][:300]}" if len(lines) > 1 else ""
        )  # TorchScript: the cause last
        raise CheckpointError(
            f"{path}: the model fails on images of shape {tuple(x.shape[1:])} from this dataset: {why}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"{path}: on a batch of 2 images of shape {tuple(x.shape[1:])} the model returned {shape};"
            f" the panel needs logits of shape (2, {data.num_classes})"
        )
    return model


def load_torchscript(path: Path, device: torch.device) -> nn.Module:
    """TorchScript (images in [0, 1] -> logits). It is loaded without unpickling Python objects;
    a pickled model is refused, since loading it would run its code."""
    try:
        return torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a TorchScript model ({str(e).splitlines()[0][:200]}); write one with `gatlab export`"
            " or torch.jit.script/trace. Pickled models are refused: loading one would run its code."
        ) from None


def safetensors_metadata(meta: dict) -> dict[str, str]:
    """What `gatlab export --format safetensors` writes beside the weights (`meta`: a final model
    file's contents), so that the file alone names its architecture, input shape and classes."""
    keys = ("model_config", "input_shape", "num_classes", "tasks")
    return {"gatlab": json.dumps({k: meta[k] for k in keys if meta.get(k) is not None})}


def load_safetensors(path: Path, data: gdata.Data, device: torch.device, model_cfg: dict) -> nn.Module:
    """Weights of one of the lab's architectures: the file's own `gatlab` metadata names it (as
    `gatlab export` writes), else `model_cfg` (a run config's model section) does. The weights must
    match it exactly, the normalisation layer's mean and std included."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_safetensors_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({str(e)[:200]})") from None
    try:
        spec = json.loads(meta["gatlab"]) if "gatlab" in meta else {"model_config": model_cfg}
        cfg = dict(spec["model_config"])
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"{path}: its 'gatlab' metadata is not what `gatlab export` writes") from None
    if spec.get("tasks"):
        raise CheckpointError(f"{path}: a multi-task model; the panel judges classifiers")
    for key, want in (("input_shape", list(data.input_shape)), ("num_classes", data.num_classes)):
        if key in spec and spec[key] != want:
            raise CheckpointError(
                f"{path}: made for {key.replace('_', ' ')} {spec[key]}, but this dataset has {want}"
            )
    model = models.build(
        cfg, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std
    )
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    wrong = [k for k, v in model.state_dict().items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        arch = cfg.get("arch", "auto")
        raise CheckpointError(
            f"{path}: the weights do not fit {arch} (width {cfg.get('width', 16)}):"
            + (f" missing {sorted(missing)[:5]}" if missing else "")
            + (f" unexpected {sorted(unexpected)[:5]}" if unexpected else "")
            + (f" wrong shape {wrong[:5]}" if wrong else "")
            + "; name the architecture (model.arch, model.width; `gatlab eval --arch --width`)"
        )
    model.load_state_dict(state)
    return model.to(device)


def evaluate_model(
    model_file: Path,
    config: dict,
    recorder: Recorder,
    *,
    device: torch.device,
    out_dir: Path,
    isolate: bool,
    time_limit_s: float,
    memory_bytes: int,
    should_stop: Callable[[], bool],
    scratch: Path | None = None,
) -> dict:
    """The panel on a model from elsewhere (TorchScript or safetensors, see `load_external`), in a
    child process (`sandbox`: with `isolate`, in bubblewrap's namespaces); cancel (`should_stop`)
    and the time limit kill it. The lab's workers evaluate every model from elsewhere this way."""
    data = gdata.load(config["dataset"])
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    try:
        result, images = sandbox.evaluate(
            model_file, config, data, device=device, isolate=isolate, time_limit_s=time_limit_s,
            memory_bytes=memory_bytes, should_stop=should_stop, scratch=scratch,
        )  # fmt: skip
    except InterruptedError:
        raise Stopped() from None
    except sandbox.SandboxError as e:
        raise CheckpointError(f"{model_file.name}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gallery.json").write_text(json.dumps(images))
    recorder.evaluation(result)
    return result


def evaluate_file(
    model_file: Path, config: dict, recorder: Recorder, *, device: torch.device, out_dir: Path
) -> dict:
    """The panel on a model file in this process: `gatlab eval --model` on a user's own machine."""
    data = gdata.load(config["dataset"])
    model = load_external(model_file, data, device, config.get("model"))
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
