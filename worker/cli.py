"""`gatlab`: the command line of GAT Lab.

Local runs:    gatlab train CONFIG [--out DIR] | eval RUN_DIR | export RUN_DIR -o FILE | methods
The service:   gatlab up | worker | submit CONFIG | db upgrade
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from backend.methods import methods_table
from backend.schemas import format_errors, parse_run_config

log = logging.getLogger("gatlab")


class CliError(Exception):
    """A user error: printed as one message, exit status 2."""


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
    from worker.gat import job
    from worker.gat.data import DataError
    from worker.gat.recorder import JsonlRecorder
    from worker.gat.train import TeacherError, checkpoint_step

    config = load_config(args.config)
    out = Path(args.out or f"runs/{config['name']}-{datetime.now():%Y%m%d-%H%M%S}")
    step = checkpoint_step(out)
    if step:
        print(f"resuming {out} from its checkpoint at step {step}", file=sys.stderr)
    rec = JsonlRecorder(out, resume_step=step, progress_bar=not args.quiet)
    try:
        summary = job.run(config, out, rec)
    except (DataError, TeacherError) as e:
        raise CliError(str(e)) from e
    finally:
        rec.close()
    print(f"run directory: {out}")
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    if "eval" in summary:
        print_panel(summary["eval"])
    return 0


def cmd_eval(args) -> int:
    from worker.gat import job
    from worker.gat.recorder import JsonlRecorder

    run_dir = Path(args.run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CliError(f"{run_dir} is not a run directory (no config.json)")
    config = validate(json.loads(cfg_path.read_text()), source=str(cfg_path))
    rec = JsonlRecorder(run_dir, resume_step=10**12, progress_bar=False)
    try:
        result = job.evaluate_run(run_dir, config, rec, panel=args.panel, n=args.n)
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    finally:
        rec.close()
    print_panel(result)
    return 0


def print_panel(result: dict) -> None:
    rows = [r for r in result["rows"] if r["norm"] == "linf"]
    eps = sorted({r["eps"] for r in rows})
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in rows}
    print(f"\nrobustness panel '{result['panel']}' on {result['n']} test examples "
          f"(clean {result['clean_accuracy']:.3f}), L-inf accuracy:")
    print(f"{'attack':<18}" + "".join(f"{e:>9.4f}" for e in eps))
    for a in attacks:
        print(f"{a:<18}" + "".join(f"{acc[(a, e)]:>9.3f}" if (a, e) in acc else f"{'-':>9}" for e in eps))
    print("sanity checks:")
    for c in result["checks"]:
        print(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")


def cmd_export(args) -> int:
    import torch

    from worker.gat.train import load_model

    run_dir = Path(args.run_dir)
    try:
        model = load_model(run_dir)
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    shape = json.loads((run_dir / "summary.json").read_text())["data"]["input_shape"]
    example = torch.rand(2, *shape)
    scripted = torch.jit.trace(model, example, strict=False)  # multi-task models return {task: output}
    scripted.save(args.output)
    print(f"wrote {args.output}: TorchScript, input N x {' x '.join(map(str, shape))} in [0, 1], "
          f"output {'a dict of task outputs' if isinstance(model(example), dict) else 'logits'}")
    return 0


def cmd_methods(args) -> int:
    if args.json:
        print(json.dumps(methods_table(), indent=2))
        return 0
    for m in methods_table():
        print(f"{m['scenario']}:{m['method']}  {m['help']}")
        for k in m["knobs"]:
            print(f"    {k['name']:<14} = {k['default']!r:<12} {k['help']}")
    return 0


def cmd_up(args) -> int:
    """API and one worker on this machine; SQLite and the embedded broker unless configured."""
    import os
    import subprocess

    import uvicorn

    from backend.config import get_settings
    from backend.migrate import upgrade

    s = get_settings()
    upgrade()
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=os.environ.copy())
    print(f"GAT Lab on http://{args.host}:{args.port}  (database {s.db_url.split('@')[-1]}, "
          f"broker {s.broker.split('@')[-1]}, worker pid {worker.pid}; auth off: embedded mode, local use only)",
          flush=True)
    try:
        uvicorn.run("backend.main:app", host=args.host, port=args.port, log_level="warning")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def cmd_worker(args) -> int:
    """One Celery worker process (one per GPU): solo pool, one task at a time."""
    import os

    from worker.tasks import app

    app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--queues={app.conf.task_default_queue}",
                     f"--hostname=gatlab-{os.getpid()}@%h", f"--loglevel={args.loglevel}", "--without-gossip",
                     "--without-mingle"])
    return 0


def cmd_submit(args) -> int:
    import httpx

    raw = yaml.safe_load(Path(args.config).read_text()) if Path(args.config).is_file() else None
    if not isinstance(raw, dict):
        raise CliError(f"config file not found or not a mapping: {args.config}")
    body = {"config": raw, "experiment": args.experiment, "tags": args.tag or []}
    try:
        r = httpx.post(f"{args.server.rstrip('/')}/api/runs", json=body, timeout=30)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {args.server}: {e}") from e
    if r.status_code == 422:
        lines = [f"{'.'.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in r.json()["detail"]]
        raise CliError(f"{args.config}: invalid run config\n  " + "\n  ".join(lines))
    if r.status_code >= 400:
        raise CliError(f"server answered {r.status_code}: {r.text}")
    run = r.json()
    print(f"run {run['id']} {run['status']}: {args.server.rstrip('/')}/api/runs/{run['id']}")
    return 0


def cmd_db(args) -> int:
    from backend.config import get_settings
    from backend.migrate import upgrade

    upgrade()
    print(f"database at head: {get_settings().db_url.split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatlab", description="GAT Lab: gradient adversarial training.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one run locally into a run directory")
    t.add_argument("config")
    t.add_argument("--out", help="run directory (resumes if it holds a checkpoint)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="run the robustness panel on a finished run directory")
    e.add_argument("run_dir")
    e.add_argument("--panel", choices=["quick", "standard"], default="quick")
    e.add_argument("--n", type=int, help="test examples attacked (the panel's default if unset)")
    e.set_defaults(func=cmd_eval)
    x = sub.add_parser("export", help="write the trained model as TorchScript")
    x.add_argument("run_dir")
    x.add_argument("-o", "--output", required=True)
    x.set_defaults(func=cmd_export)
    m = sub.add_parser("methods", help="list scenarios, methods and their knobs")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)
    u = sub.add_parser("up", help="start the API and one worker (embedded default: SQLite, no Redis)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.set_defaults(func=cmd_up)
    w = sub.add_parser("worker", help="start one worker for the configured broker and database")
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=cmd_worker)
    sb = sub.add_parser("submit", help="POST a run config to a server")
    sb.add_argument("config")
    sb.add_argument("--server", default="http://127.0.0.1:8000")
    sb.add_argument("--experiment")
    sb.add_argument("--tag", action="append")
    sb.set_defaults(func=cmd_submit)
    d = sub.add_parser("db", help="database maintenance")
    d.add_argument("action", choices=["upgrade"])
    d.set_defaults(func=cmd_db)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CliError as e:
        print(f"gatlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
