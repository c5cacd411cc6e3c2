"""The training commands of `gatlab` (the `worker` install): train, eval, export, worker.

`labcore.cli.main` is the one entry point; it hands these commands here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file

from labcore import study
from labcore.cli import CliError, emit
from labcore.panel import PanelResult
from labcore.run_config import format_errors, parse_run_config
from worker.gat import job
from worker.gat.data import DataError
from worker.gat.recorder import JsonlRecorder
from worker.gat.train import (
    FINAL,
    CheckpointError,
    TeacherError,
    checkpoint_step,
    load_file,
    load_model,
    pick_device,
)

log = logging.getLogger("gatlab")


def load_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML or JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CliError(f"{path}: the config must be a mapping with keys name, scenario, method, ...")
    return validate(raw, source=path)


def validate(raw: dict, *, source: str = "config") -> dict:
    try:
        return parse_run_config(raw).model_dump(mode="json")
    except ValidationError as e:
        raise CliError(f"{source}: invalid run config\n  " + "\n  ".join(format_errors(e))) from e


def cmd_train(args) -> int:
    config = load_config(args.config)
    for key in ("model_path", "model_upload"):
        if config["eval"][key] is not None:
            raise CliError(
                f"{args.config}: eval.{key}: training makes its own model; evaluate a file with `gatlab eval --model`"
            )
    out = Path(args.out or f"runs/{config['name']}-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        step = checkpoint_step(out)
    except CheckpointError as e:
        raise CliError(str(e)) from e
    if step:
        print(f"resuming {out} from its checkpoint at step {step}", file=sys.stderr)
    rec = JsonlRecorder(out, resume_step=step, progress_bar=not args.quiet)
    try:
        summary, panel = job.run(config, out, rec)
    except (DataError, TeacherError, CheckpointError) as e:
        raise CliError(str(e)) from e
    finally:
        rec.close()
    print(f"run directory: {out}")
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    if panel is not None:
        print_panel(panel)
    return 0


def cmd_eval(args) -> int:
    if args.model:
        return eval_model(args)
    if not args.run_dir:
        raise CliError("name a run directory, or a model with --model FILE --dataset NAME")
    run_dir = Path(args.run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CliError(f"{run_dir} is not a run directory (no config.json)")
    config = validate(json.loads(cfg_path.read_text()), source=str(cfg_path))
    rec = JsonlRecorder(run_dir, resume_step=10**12, progress_bar=False)
    try:
        result = job.evaluate_run(run_dir, config, rec, panel=args.panel, n=args.n)
    except (FileNotFoundError, CheckpointError) as e:
        raise CliError(str(e)) from e
    finally:
        rec.close()
    print_panel(result)
    return 0


def eval_model(args) -> int:
    """`gatlab eval --model FILE --dataset NAME`: the panel on a model trained elsewhere."""
    if args.run_dir:
        raise CliError("give a run directory or --model, not both")
    dataset = {"name": args.dataset, "data_dir": args.data_dir, **({"path": args.path} if args.path else {})}
    config = validate(
        {
            "name": f"eval {Path(args.model).name}",
            "scenario": "defense",
            "method": "erm",
            "dataset": dataset,
            "model": {k: v for k, v in (("arch", args.arch), ("width", args.width)) if v is not None},
            "eval": {"panel": args.panel, "n": args.n, "model_path": args.model},
        },
        source="the command line",
    )
    out = Path(args.out or f"{Path(args.model).with_suffix('')}-eval")
    rec = JsonlRecorder(out, resume_step=10**12, progress_bar=False)
    try:
        device = pick_device(config["train"].get("device", "auto"))
        result = job.evaluate_file(Path(args.model), config, rec, device=device, out_dir=out)
    except (FileNotFoundError, CheckpointError, DataError) as e:
        raise CliError(str(e)) from e
    finally:
        rec.close()
    print_panel(result)
    print(f"\nresults in {out}/eval.json")
    return 0


def print_panel(raw: dict) -> None:
    result = PanelResult.model_validate(raw)
    rows = [r for r in result.rows if r.norm == "linf"]
    eps = sorted({r.eps for r in rows})
    attacks = list(dict.fromkeys(r.attack for r in rows))
    acc = {(r.attack, r.eps): r.accuracy for r in rows}
    lo, hi = result.clean_ci
    print(
        f"\nrobustness panel '{result.panel}' on {result.n} test examples, every attack on the same"
        f" ones (clean {result.clean_accuracy:.3f}, 95% CI {lo:.3f}-{hi:.3f}), L-inf accuracy:"
    )
    print(f"{'attack':<18}" + "".join(f"{e:>9.4f}" for e in eps))
    for a in attacks:
        print(f"{a:<18}" + "".join(f"{acc[(a, e)]:>9.3f}" if (a, e) in acc else f"{'-':>9}" for e in eps))
    for r in result.at_standard_eps():
        if r.norm == "linf" and r.attack in ("autoattack", "worst_case"):
            print(
                f"{r.attack} at eps {r.eps:g}: {r.accuracy:.3f} (95% CI {r.ci[0]:.3f}-{r.ci[1]:.3f}, n={r.n})"
            )
    mn, pr = result.min_norm, result.probe
    med = "not reached (FAB fooled fewer than half)" if mn["median"] is None else f"{mn['median']:.4f}"
    print(f"smallest L-inf perturbation (FAB, {mn['found']}/{mn['n']} fooled): median {med}")
    print(
        f"gradient probe: {pr['accuracy']:.3f} (95% CI {pr['ci'][0]:.3f}-{pr['ci'][1]:.3f}, n={pr['n_test']})"
        f" of labels read from input gradients; chance {pr['chance']:.3f}"
    )
    print("sanity checks:")
    for c in result.checks:
        print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")


def cmd_export(args) -> int:
    run_dir = Path(args.run_dir)
    try:
        model = load_model(run_dir)
    except (FileNotFoundError, CheckpointError) as e:
        raise CliError(str(e)) from e
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "torchscript")
    if fmt == "safetensors":
        meta = load_file(run_dir / FINAL)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, args.output, metadata=job.safetensors_metadata(meta))
        print(
            f"wrote {args.output}: safetensors weights of {meta['model_config'].get('arch', 'auto')}"
            " (the file's metadata names the architecture); `gatlab eval --model` reads it"
        )
        return 0
    shape = json.loads((run_dir / "summary.json").read_text())["data"]["input_shape"]
    example = torch.rand(2, *shape)
    scripted = torch.jit.trace(model, example, strict=False)  # multi-task models return {task: output}
    scripted.save(args.output)
    print(
        f"wrote {args.output}: TorchScript, input N x {' x '.join(map(str, shape))} in [0, 1], "
        f"output {'a dict of task outputs' if isinstance(model(example), dict) else 'logits'}"
    )
    return 0


def _local_record(label: str, seed: int, run_dir: Path) -> dict:
    """What the study's report reads of a finished local run directory (as the server reads its runs)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = run_dir / "eval.json"
    panel = PanelResult.model_validate_json(ev.read_text()) if ev.exists() else None
    return study.record(label, seed, "succeeded", None, summary, panel)


def cmd_study(args) -> int:
    """`gatlab study run FILE --local`: every run of the study here, one after another (a run
    directory each; one that finished is not trained again, one that stopped resumes), then the
    report, computed by the same code as the server's."""
    raw = yaml.safe_load(Path(args.file).read_text()) if Path(args.file).is_file() else None
    if not isinstance(raw, dict):
        raise CliError(f"study file not found or not a mapping: {args.file}")
    try:
        design = study.StudyDesign.model_validate(raw)
        runs = study.expand(design)
    except ValidationError as e:
        raise CliError(f"{args.file}: invalid study\n  " + "\n  ".join(format_errors(e))) from e
    if args.out and not Path(args.out).resolve().parent.is_dir():  # found out now, not after the training
        raise CliError(f"--out: no such directory: {Path(args.out).parent}")
    root = Path(args.out_dir or f"runs/study-{design.name}")
    records = []
    for _, label, seed, config in runs:
        run_dir = root / study.run_dir_name(label, seed)
        finished = (run_dir / "summary.json").exists() and (
            config["eval"]["panel"] == "none"
            or config["scenario"] == "multitask"
            or (run_dir / "eval.json").exists()
        )
        if not finished:
            print(f"{label}, seed {seed}: training into {run_dir}", file=sys.stderr)
            rec = JsonlRecorder(run_dir, resume_step=checkpoint_step(run_dir), progress_bar=False)
            try:
                job.run(config, run_dir, rec)
            except (DataError, TeacherError, CheckpointError) as e:
                raise CliError(f"{label}, seed {seed}: {e}") from e
            finally:
                rec.close()
        records.append(_local_record(label, seed, run_dir))
    emit(study.EXPORTS[args.format][0](study.report(design, records)), args.out)
    return 0


def cmd_worker(args) -> int:
    """One Celery worker process (one per GPU): solo pool, one task at a time."""
    from worker.tasks import (
        app,
        ping_queue,
    )  # here, not at the top: importing it configures Celery and the database

    name = args.name or f"gatlab-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={app.conf.task_default_queue},{ping_queue(name)}",
            f"--hostname={name}@%h",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatlab", description="GAT Lab: training commands.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one run locally into a run directory")
    t.add_argument("config")
    t.add_argument("--out", help="run directory (resumes if it holds a checkpoint)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser(
        "eval", help="run the robustness panel on a finished run directory, or on any TorchScript model"
    )
    e.add_argument("run_dir", nargs="?")
    e.add_argument(
        "--model",
        help="a TorchScript model (images in [0, 1] -> logits) or .safetensors weights of a lab"
        " architecture, e.g. from `gatlab export`",
    )
    e.add_argument("--arch", help="with .safetensors weights that do not name it: the architecture")
    e.add_argument("--width", type=int, help="with --arch: its width")
    e.add_argument(
        "--dataset", default="digits", help="with --model: the dataset's name (as in a run config)"
    )
    e.add_argument("--path", help="with --model: the dataset's .npz file")
    e.add_argument("--data-dir", default="data", help="with --model: folder of torchvision datasets")
    e.add_argument("--out", help="with --model: where eval.json goes (default: next to the model)")
    e.add_argument("--panel", choices=["quick", "standard"], default="quick")
    e.add_argument("--n", type=int, help="test examples attacked (the panel's default if unset)")
    e.set_defaults(func=cmd_eval)
    x = sub.add_parser("export", help="write the trained model as TorchScript or safetensors weights")
    x.add_argument("run_dir")
    x.add_argument("-o", "--output", required=True)
    x.add_argument(
        "--format",
        choices=["torchscript", "safetensors"],
        help="default: safetensors for an output ending in .safetensors, else TorchScript",
    )
    x.set_defaults(func=cmd_export)
    sy = sub.add_parser("study", help="run a study here, without a server (--local), and print its report")
    sy.add_argument("action", choices=["run"])
    sy.add_argument("file", help="the study's design (YAML), e.g. studies/defense-digits.yaml")
    sy.add_argument("--local", action="store_true", required=True, help="here, one run after another")
    sy.add_argument("--out-dir", help="where the run directories go (default runs/study-NAME)")
    sy.add_argument("--format", choices=["md", "latex", "csv", "json"], default="md")
    sy.add_argument("--out", help="write the report here (default: stdout)")
    sy.set_defaults(func=cmd_study)
    w = sub.add_parser("worker", help="start one worker for the configured broker and database")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument(
        "--name", help="worker name (default gatlab-<pid>); `gatlab health --worker NAME` checks it is alive"
    )
    w.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except CliError as e:
        print(f"gatlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from labcore.cli import main as gatlab

    sys.exit(gatlab())  # `python -m worker.cli` is `gatlab`
