"""The training loop: plain functions around a method's step.

`train` runs one validated run config (a dict) into a run directory. It reports through a
recorder, saves a checkpoint every epoch (model, auxiliary networks, optimisers, schedule and
RNG state), resumes exactly from the last one, and checks a cooperative stop flag between steps.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as gdata
from . import models, scenarios, stats
from .attacks.pgd import pgd
from .methods import Method
from .methods import make as make_method
from .recorder import Recorder

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"


class Stopped(Exception):
    """Raised when the stop flag is seen between steps."""


class HandedBack(Exception):
    """Raised when the hand-back flag is seen between steps, after a checkpoint at that very step
    (mid-epoch): a worker told to shut down gives its run back and another resumes it exactly."""


@dataclass
class Setup:
    config: dict
    data: gdata.Data
    model: nn.Module
    device: torch.device


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(config: dict, device: torch.device | None = None) -> Setup:
    """Data and a freshly initialised model for a run config."""
    seed_all(config["train"]["seed"])
    data = gdata.load(config["dataset"])
    model = scenarios.of(config).build(config["model"], data)
    device = device or pick_device(config["train"].get("device", "auto"))
    return Setup(config, data, model.to(device), device)


def standard_eps(config: dict) -> tuple[float, float]:
    return gdata.STANDARD_EPS[config["dataset"]["name"]]


def _optimizer(model: nn.Module, t: dict) -> torch.optim.Optimizer:
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=t["lr"],
            momentum=t["momentum"],
            weight_decay=t["weight_decay"],
            nesterov=t["momentum"] > 0,
        )
    return torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def train_step(
    method: Method,
    opt: torch.optim.Optimizer,
    aux_opt: torch.optim.Optimizer | None,
    x: torch.Tensor,
    y,
    progress: float,
    i: int,
) -> tuple[torch.Tensor, dict]:
    """One optimisation step of the main network and the method's auxiliary modules."""
    opt.zero_grad(set_to_none=True)
    if aux_opt:
        aux_opt.zero_grad(set_to_none=True)
    loss, metrics = method.step(x, y, progress, i)
    if not method.manual_backward:
        loss.backward()
    opt.step()
    if aux_opt:
        aux_opt.step()
    if method.post_step:
        method.post_step()
    return loss, metrics


def aux_optimizer(method: Method) -> torch.optim.Optimizer | None:
    params = [q for m in method.aux.values() for q in m.parameters()]
    return torch.optim.Adam(params, lr=method.aux_lr) if params else None


def _save_atomic(obj: dict, path: Path) -> None:
    """Write, then rename: a reader sees the old file or the new one. A write the disk refuses (full,
    over a quota or a file size limit) leaves nothing behind and says so plainly; torch's own
    message is "[enforce fail at inline_container.cc] unexpected pos"."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise StorageError(
            f"could not write {path.name} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); the disk"
            f" holding the runs has {free >> 20} MiB free, or a file size limit was reached. The run keeps its"
            " last checkpoint: retry it once space is freed"
        ) from None


class StorageError(OSError):
    """A file of the run could not be written (disk full, quota, file size limit)."""


@dataclass
class Loop:
    """Everything one training run holds between steps, resumed from the checkpoint if any."""

    s: Setup
    out_dir: Path
    recorder: Recorder
    method: Method
    opt: torch.optim.Optimizer
    aux_opt: torch.optim.Optimizer | None
    sched: torch.optim.lr_scheduler.LRScheduler
    total: int  # steps of the whole run
    step: int  # steps done
    start_epoch: int
    start_batch: int  # batches of start_epoch done before a mid-epoch checkpoint
    aug_state: torch.Tensor | None  # the augmentation RNG at that batch
    teacher: nn.Module | None
    edges: torch.Tensor  # gradient-histogram bin edges
    t0: float = field(default_factory=time.monotonic)
    first_step: int = -1  # the step this attempt started from (the checkpoint's when resuming)

    def __post_init__(self) -> None:
        self.first_step = self.step

    def seconds_per_step(self) -> float:
        """Wall seconds per training step of this attempt (its validation passes included)."""
        return (time.monotonic() - self.t0) / max(1, self.step - self.first_step)

    @property
    def scenario(self) -> scenarios.Scenario:
        return scenarios.of(self.s.config)

    def evaluate(self, split: gdata.Split) -> dict:
        """Accuracy and loss (per task for multi-task models), in eval mode."""
        return self.scenario.evaluate(self.s.model, self.s.data, split, self.s.device)

    def checkpoint(self, epoch: int, *, batch: int = 0, aug_gen: torch.Generator | None = None) -> None:
        self.recorder.flush()  # first: a checkpoint at step S promises every point up to S is stored
        _save_checkpoint(
            self.out_dir,
            self.s,
            self.method,
            self.opt,
            self.aux_opt,
            self.sched,
            epoch,
            self.step,
            batch=batch,
            aug_gen=aug_gen,
        )


def train(
    config: dict,
    out_dir: Path,
    recorder: Recorder,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    should_hand_back: Callable[[], bool] = lambda: False,
    device: torch.device | None = None,
) -> dict:
    """Train a run config into `out_dir`, resuming from its checkpoint if there is one. Between
    steps, `should_stop` ends the run (Stopped) and `should_hand_back` checkpoints it (HandedBack)."""
    loop = prepare(
        config, out_dir, recorder, should_stop=should_stop, should_hand_back=should_hand_back, device=device
    )
    for epoch in range(loop.start_epoch, config["train"]["epochs"]):
        train_one_epoch(loop, epoch, should_stop=should_stop, should_hand_back=should_hand_back)
        end_epoch(loop, epoch)
    return finish(loop)


def prepare(
    config: dict,
    out_dir: Path,
    recorder: Recorder,
    *,
    should_stop: Callable[[], bool],
    should_hand_back: Callable[[], bool],
    device: torch.device | None,
) -> Loop:
    """Data, model, method, optimisers and schedule, restored from the checkpoint if there is one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    s, t = setup(config, device), config["train"]
    teacher = None
    if scenarios.of(config).needs_teacher:
        teacher = prepare_teacher(
            config,
            out_dir,
            recorder,
            should_stop=should_stop,
            should_hand_back=should_hand_back,
            device=s.device,
        )
        seed_all(t["seed"])  # the student's run does not depend on how the teacher was obtained
    method = _method(config, s, teacher)
    opt, aux_opt = _optimizer(s.model, t), aux_optimizer(method)
    total = -(-len(s.data.train) // t["batch_size"]) * t["epochs"]
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if t["lr_schedule"] == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    start_epoch, step, start_batch, aug_state = _resume(out_dir, s, method, opt, aux_opt, sched)
    recorder.progress(step, total, None)
    edges = stats.hist_edges(config.get("params", {}).get("grad_norm", "l2"))
    return Loop(s, out_dir, recorder, method, opt, aux_opt, sched, total, step, start_epoch, start_batch,
                aug_state, teacher, edges)  # fmt: skip


def _method(config: dict, s: Setup, teacher: nn.Module | None) -> Method:
    """The run's method on its model: the config's knobs, the dataset's standard eps if unset, and
    the teacher (distillation) or the tasks (multi-task learning)."""
    p = dict(config.get("params", {}))  # the teacher's knobs are the trainer's: `make` leaves them out
    if p.get("eps") is None:  # every factory takes eps; unset means the dataset's standard radius
        p["eps"] = standard_eps(config)[0]
    extra = scenarios.of(config).method_context(s.data, teacher)
    method = make_method(
        config["scenario"], config["method"], s.model, num_classes=s.data.num_classes,
        input_shape=s.data.input_shape, **p, **extra,
    )  # fmt: skip
    for m in method.aux.values():
        m.to(s.device)
    return method


def train_one_epoch(
    loop: Loop, epoch: int, *, should_stop: Callable[[], bool], should_hand_back: Callable[[], bool]
) -> None:
    """The epoch's steps (from a mid-epoch checkpoint's batch when resuming), with the stop and
    hand-back flags read before each."""
    s, t, rec = loop.s, loop.s.config["train"], loop.recorder
    s.model.train()
    seed = t["seed"] * 100_003 + epoch  # the epoch's data order depends on seed and epoch only
    aug_gen = torch.Generator().manual_seed(seed)
    skip = (
        loop.start_batch if epoch == loop.start_epoch else 0
    )  # batches trained before a mid-epoch checkpoint
    if skip and loop.aug_state is not None:
        aug_gen.set_state(loop.aug_state)
    for b, (idx, x, y) in enumerate(gdata.batches(s.data.train, t["batch_size"], shuffle=True, seed=seed)):
        if b < skip:
            continue
        if should_stop():
            raise Stopped(f"stopped at step {loop.step}")
        if should_hand_back():
            loop.checkpoint(epoch, batch=b, aug_gen=aug_gen)
            raise HandedBack(
                f"checkpointed at step {loop.step} (epoch {epoch + 1}, batch {b}) and handed back"
            )
        x = (gdata.augment(x, aug_gen) if t.get("augment") else x).to(s.device)
        y = loop.scenario.targets(s.data, idx, y, s.device)
        _, metrics = train_step(loop.method, loop.opt, loop.aux_opt, x, y, loop.step / loop.total, loop.step)
        loop.sched.step()
        loop.step += 1
        _record_step(loop, x, y, metrics)
        rec.progress(loop.step, loop.total, loop.seconds_per_step() * (loop.total - loop.step))


def _record_step(loop: Loop, x, y, metrics: dict) -> None:
    """The step's losses every `log_every` steps, gradient statistics every `stats_every`."""
    t, step = loop.s.config["train"], loop.step
    if step % t["log_every"] == 0 or step == loop.total:
        loop.recorder.log(
            step,
            {**{f"train/{k}": float(v) for k, v in metrics.items()}, "train/lr": loop.sched.get_last_lr()[0]},
        )
    if step % t["stats_every"] == 0 or step == 1:
        grad_norm = loop.s.config["params"].get("grad_norm", "l2")
        loop.scenario.record_stats(
            loop.s.model,
            loop.s.data,
            x,
            y,
            step=step,
            grad_norm=grad_norm,
            edges=loop.edges,
            recorder=loop.recorder,
        )


def robust_accuracy(
    model: nn.Module, split: gdata.Split, device: torch.device, *, eps: float, steps: int
) -> float:
    """Accuracy under PGD (random start, seed 0) in eval mode, leaving every RNG as it was: a run
    that logs it trains exactly as one that does not."""
    was, correct = model.training, 0
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for _, x, y in gdata.batches(split, 512, shuffle=False):
            x, y = x.to(device), y.to(device)
            adv = pgd(model, x, y, eps=eps, steps=steps)
            with torch.no_grad():
                correct += (model(adv).argmax(1) == y).sum().item()
    model.train(was)
    return correct / max(1, len(split))


def validate(loop: Loop) -> dict:
    """The model's figures on the validation split (none without one): accuracy and loss, and the
    accuracy under PGD when `train.val_pgd_steps` asks. Deterministic: the same model, the same figures."""
    val = loop.evaluate(loop.s.data.val) if len(loop.s.data.val) else {}
    steps = loop.s.config["train"].get("val_pgd_steps", 0)
    if val and steps and loop.scenario.attacked:
        eps = standard_eps(loop.s.config)[0]
        val["pgd"] = robust_accuracy(loop.s.model, loop.s.data.val, loop.s.device, eps=eps, steps=steps)
    return val


def end_epoch(loop: Loop, epoch: int) -> None:
    """Validation, the epoch's record, and a checkpoint."""
    val = validate(loop)
    log.info(
        "epoch %d/%d (step %d): %s",
        epoch + 1,
        loop.s.config["train"]["epochs"],
        loop.step,
        ", ".join(f"val {k} {v:.4f}" for k, v in val.items()),
    )
    loop.recorder.log(loop.step, {"epoch": epoch + 1, **{f"val/{k}": v for k, v in val.items()}})
    loop.checkpoint(epoch + 1)


def finish(loop: Loop) -> dict:
    """Test evaluation (and agreement with the teacher), the final model and the summary. Runs as
    well when resuming from the last epoch's checkpoint, so a crash in here costs no training."""
    s, config = loop.s, loop.s.config
    seconds_per_step = loop.seconds_per_step() if loop.step > loop.first_step else None
    test = loop.evaluate(s.data.test)
    log.info("finished: %s", ", ".join(f"test {k} {v:.4f}" for k, v in test.items()))
    if loop.teacher is not None:
        test["agreement"] = agreement(s.model, loop.teacher, s.data.test, s.device)
        with torch.no_grad():
            test["teacher_acc"] = scenarios.evaluate(loop.teacher, s.data.test, s.device)["acc"]
    val = validate(loop)  # the final model's, as the last epoch logged it (a tuning study reads these)
    game = game_probe(loop)
    if game:
        test["probe"], test["probe_chance"] = game["accuracy"], game["chance"]
    loop.recorder.log(loop.step, {f"test/{k}": v for k, v in test.items()})
    final = {
        "model": s.model.state_dict(),
        "model_config": config["model"],
        "num_classes": s.data.num_classes,
        "input_shape": list(s.data.input_shape),
        "mean": s.data.mean,
        "std": s.data.std,
        "tasks": loop.scenario.tasks(s.data),
    }
    loop.recorder.flush()  # first: a lab worker that lost its run to another attempt stops here, writing nothing
    _save_atomic(final, loop.out_dir / FINAL)
    summary = {
        "steps": loop.step,
        "test": test,
        "val": val,
        "data": s.data.info,
        "device": str(s.device),
        "seconds_per_step": seconds_per_step,
        "game": game,
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "host": platform.node(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else None,
        },
    }
    (loop.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    loop.recorder.flush()
    return summary


def game_probe(loop: Loop) -> dict:
    """GAT's game scored after training by a fresh classifier (docs/design.md, the game), for every
    run of the scenario so baselines give the reference: task id from per-task gradients (multi-task),
    teacher vs student from input gradients (distillation), the class from input gradients (defense:
    the origin GREAT hides; the panel, when one runs, measures the same probe again with its own seed).
    `played`: the method trained an auxiliary network against the model through the reversal layer."""
    s, sc = loop.s, loop.scenario
    out = sc.probe(s.model, loop.teacher, s.data, device=s.device, seed=s.config["train"]["seed"])
    return {**out, "of": sc.probe_reads, "played": loop.method.plays}


class TeacherError(ValueError):
    """A teacher that cannot be had, with a message naming the knob."""


class _PhaseOne(Recorder):
    """The teacher phase reports progress only; its per-step points would clash with the student's."""

    def __init__(self, inner: Recorder):
        self.inner = inner

    def progress(self, step, total, eta_s):
        self.inner.progress(step, total, eta_s)


def prepare_teacher(
    config: dict, out_dir: Path, recorder: Recorder, *, should_stop, device, should_hand_back=lambda: False
) -> nn.Module:
    """The fixed teacher: a finished run directory, or ERM trained on the full training split in a
    first phase of this job (kept in out_dir/teacher, so a resumed job does not train it again)."""
    p = config["params"]
    if p.get("teacher_dir"):
        try:
            return load_model(Path(p["teacher_dir"]), device)
        except (FileNotFoundError, CheckpointError) as e:
            raise TeacherError(f"params.teacher_dir: {e}") from e
    if p.get("teacher_run"):
        raise TeacherError(
            "params.teacher_run: run ids are resolved by the lab service; locally, give params.teacher_dir"
        )
    tdir = out_dir / "teacher"
    if not (tdir / FINAL).exists():
        tcfg = {
            **config,
            "scenario": "defense",
            "method": "erm",
            "params": {},
            "model": {**config["model"], "arch": p["teacher_arch"], "width": p["teacher_width"]},
            "dataset": {**config["dataset"], "fraction": 1.0},
            "train": {**config["train"], "epochs": p["teacher_epochs"]},
            "eval": {**config["eval"], "panel": "none"},
        }
        summary = train(
            tcfg,
            tdir,
            _PhaseOne(recorder),
            should_stop=should_stop,
            should_hand_back=should_hand_back,
            device=device,
        )
        recorder.log(0, {"teacher/test/acc": summary["test"]["acc"]})
    return load_model(tdir, device)


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, split: gdata.Split, device: torch.device) -> float:
    student.eval()
    same = sum(
        (student(x.to(device)).argmax(1) == teacher(x.to(device)).argmax(1)).sum().item()
        for _, x, _ in gdata.batches(split, 512, shuffle=False)
    )
    return same / max(1, len(split))


class CheckpointError(ValueError):
    """A checkpoint or model file that is refused or unreadable, with a message for the user."""


def load_file(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint or model file: tensors and plain containers only (`weights_only`), so a
    crafted file cannot run code on the worker."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused, it holds more than tensors and plain containers ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e


def _rng_state() -> dict:
    mt, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's state as tensors and numbers: the checkpoint stays loadable with weights_only=True
    st = {
        "torch": torch.get_rng_state(),
        "numpy": [mt, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    mt, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((mt, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_checkpoint(
    out_dir,
    s,
    method,
    opt,
    aux_opt,
    sched,
    epoch: int,
    step: int,
    *,
    batch: int = 0,
    aug_gen: torch.Generator | None = None,
) -> None:
    """`epoch` epochs done and `batch` batches of the next (0 at an epoch's end)."""
    ckpt = {
        "epoch": epoch,
        "step": step,
        "batch": batch,
        "model": s.model.state_dict(),
        "aug_gen": aug_gen.get_state() if aug_gen is not None else None,
        "aux": {k: m.state_dict() for k, m in method.aux.items()},
        "opt": opt.state_dict(),
        "aux_opt": aux_opt.state_dict() if aux_opt else None,
        "sched": sched.state_dict(),
        "rng": _rng_state(),
    }
    _save_atomic(ckpt, out_dir / CHECKPOINT)


def _resume(out_dir, s, method, opt, aux_opt, sched) -> tuple[int, int, int, torch.Tensor | None]:
    """(epoch, step, batch within the epoch, augmentation RNG state) of the checkpoint, restored."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return 0, 0, 0, None
    ckpt = load_file(path, s.device)
    s.model.load_state_dict(ckpt["model"])
    for k, m in method.aux.items():
        m.load_state_dict(ckpt["aux"][k])
    opt.load_state_dict(ckpt["opt"])
    if aux_opt and ckpt["aux_opt"]:
        aux_opt.load_state_dict(ckpt["aux_opt"])
    sched.load_state_dict(ckpt["sched"])
    _set_rng_state(ckpt["rng"])
    log.info("resumed from %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
    aug = ckpt.get("aug_gen")
    return ckpt["epoch"], ckpt["step"], ckpt.get("batch", 0), aug.cpu() if aug is not None else None


def checkpoint_step(out_dir: Path) -> int:
    """The step of the last checkpoint in a run directory (0 if none)."""
    path = out_dir / CHECKPOINT
    return load_file(path)["step"] if path.exists() else 0


def load_model(run_dir: Path, device: torch.device | None = None) -> nn.Module:
    """The trained model of a finished run directory, in eval mode."""
    path = run_dir / FINAL
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no {FINAL}: is it a finished run directory?")
    meta = load_file(path)
    if meta.get("tasks"):
        cfg = dict(meta["model_config"])
        if "head" not in cfg and any(f"heads.{t}.weight" in meta["model"] for t in meta["tasks"]):
            cfg["head"] = "linear"  # a run from before heads had a config key (all linear then)
        model = models.build_multitask(
            cfg,
            input_shape=tuple(meta["input_shape"]),
            tasks=meta["tasks"],
            mean=meta["mean"],
            std=meta["std"],
        )
    else:
        model = models.build(
            meta["model_config"],
            input_shape=tuple(meta["input_shape"]),
            num_classes=meta["num_classes"],
            mean=meta["mean"],
            std=meta["std"],
        )
    model.load_state_dict(meta["model"])
    return model.to(device or torch.device("cpu")).eval()
