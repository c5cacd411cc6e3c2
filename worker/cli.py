"""`gatlab`: the command line of GAT Lab.

Local runs:    gatlab train CONFIG [--out DIR] | eval RUN_DIR | export RUN_DIR -o FILE | methods
The service:   gatlab up | worker | submit CONFIG | db upgrade | health
Users:         gatlab setup ADMIN | users create|list|token|tokens|revoke|password|disable
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
    from worker.gat.train import CheckpointError, TeacherError, checkpoint_step

    config = load_config(args.config)
    out = Path(args.out or f"runs/{config['name']}-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        step = checkpoint_step(out)
    except CheckpointError as e:
        raise CliError(str(e)) from e
    if step:
        print(f"resuming {out} from its checkpoint at step {step}", file=sys.stderr)
    rec = JsonlRecorder(out, resume_step=step, progress_bar=not args.quiet)
    try:
        summary = job.run(config, out, rec)
    except (DataError, TeacherError, CheckpointError) as e:
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
    from worker.gat.train import CheckpointError

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

    from worker.gat.train import CheckpointError, load_model

    run_dir = Path(args.run_dir)
    try:
        model = load_model(run_dir)
    except (FileNotFoundError, CheckpointError) as e:
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
    import ipaddress
    import os
    import signal
    import subprocess

    import uvicorn

    from backend.config import get_settings
    from backend.migrate import upgrade

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False  # a host name
    if loopback and "GATLAB_AUTH" not in os.environ:
        os.environ["GATLAB_AUTH"] = "false"  # embedded default: this machine only, no users
    get_settings.cache_clear()
    s = get_settings()
    if not s.auth:
        if not loopback:
            raise CliError(f"refusing to serve {args.host} with GATLAB_AUTH=false: bind 127.0.0.1, or turn auth on")
        auth_line = "auth off: embedded mode, local use only"
    else:
        auth_line = "auth on: sign in with a token from `gatlab setup` / `gatlab users create`"
    upgrade()
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=os.environ.copy())
    print(f"GAT Lab on http://{args.host}:{args.port}  (database {s.db_url.split('@')[-1]}, "
          f"broker {s.broker.split('@')[-1]}, worker pid {worker.pid}; {auth_line})",
          flush=True)
    # uvicorn re-raises SIGTERM once it has shut down; with the default handler the process would
    # die there and leave its worker running. This one turns it into an exit through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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
                     f"--hostname={args.name or f'gatlab-{os.getpid()}'}@%h", f"--loglevel={args.loglevel}", "--without-gossip",
                     "--without-mingle"])
    return 0


def cmd_submit(args) -> int:
    import httpx

    raw = yaml.safe_load(Path(args.config).read_text()) if Path(args.config).is_file() else None
    if not isinstance(raw, dict):
        raise CliError(f"config file not found or not a mapping: {args.config}")
    body = {"config": raw, "experiment": args.experiment, "tags": args.tag or []}
    import os

    token = os.environ.get("GATLAB_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{args.server.rstrip('/')}/api/runs", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {args.server}: {e}") from e
    if r.status_code == 422:
        lines = [f"{'.'.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in r.json()["detail"]]
        raise CliError(f"{args.config}: invalid run config\n  " + "\n  ".join(lines))
    if r.status_code == 401:
        raise CliError(f"{args.server} needs sign-in: set GATLAB_TOKEN to a token from `gatlab users create`")
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


def _password(args) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    pw = sys.stdin.readline().rstrip("\n")
    if len(pw) < 8:
        raise CliError("a password has at least 8 characters")
    return pw


def _print_token(user, secret: str) -> None:
    print(f"user {user.name}{' (admin)' if user.is_admin else ''}; API token (shown once, keep it secret):")
    print(secret)


def cmd_setup(args) -> int:
    """The first admin of a lab server: refused once any admin exists (no default password, ever)."""
    from sqlalchemy import select

    from backend import auth
    from backend.db import session_scope
    from backend.migrate import upgrade
    from backend.models import User

    upgrade()
    with session_scope() as s:
        if s.scalar(select(User).where(User.is_admin)) is not None:
            raise CliError("this lab already has an admin: an admin runs `gatlab users create NAME`")
        try:
            user = auth.create_user(s, name=args.name, admin=True, password=_password(args))
        except auth.AuthError as e:
            raise CliError(str(e)) from e
        _, secret = auth.create_token(s, user=user, label="setup")
        _print_token(user, secret)
    return 0


def cmd_users(args) -> int:
    from sqlalchemy import select

    from backend import auth
    from backend.db import session_scope
    from backend.migrate import upgrade
    from backend.models import ApiToken, User

    upgrade()  # idempotent: user commands work on a database that was never started
    with session_scope() as s:
        try:
            if args.action == "create":
                user = auth.create_user(s, name=args.name, admin=args.admin, password=_password(args))
                _, secret = auth.create_token(s, user=user, label=args.label)
                _print_token(user, secret)
            elif args.action == "list":
                for u in s.scalars(select(User).order_by(User.id)):
                    live = s.scalars(select(ApiToken).where(ApiToken.user_id == u.id, ApiToken.revoked_at.is_(None))).all()
                    print(f"{u.id:>4}  {u.name:<20} {'admin' if u.is_admin else 'user ':<6} "
                          f"{'disabled' if u.disabled else 'active':<9} {len(live)} live token(s)")
            elif args.action == "token":
                user = auth.get_user(s, args.name)
                _, secret = auth.create_token(s, user=user, label=args.label)
                _print_token(user, secret)
            elif args.action == "tokens":
                user = auth.get_user(s, args.name)
                for t in s.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)):
                    print(f"{t.id:>4}  {t.prefix}...  {t.label or '-':<16} created {t.created_at:%Y-%m-%d %H:%M}  "
                          f"{'REVOKED' if t.revoked_at else 'live'}")
            elif args.action == "revoke":
                row = auth.revoke_token(s, token_id=int(args.name) if args.name.isdigit() else -1)
                print(f"revoked token {row.id} ({row.prefix}...)")
            elif args.action == "password":
                user = auth.get_user(s, args.name)
                args.password_stdin = True
                auth.set_password(s, user=user, password=_password(args))
                print(f"password set for {user.name}; their browser sessions are ended")
            elif args.action == "disable":
                auth.get_user(s, args.name).disabled = True
                print(f"user {args.name} disabled: their tokens and sessions no longer sign in")
        except auth.AuthError as e:
            raise CliError(str(e)) from e
    return 0


def cmd_health(args) -> int:
    """Exit 0 if the API answers /api/health, or the named worker on this host answers a ping."""
    if args.api:
        import httpx

        try:
            ok = httpx.get(f"{args.api.rstrip('/')}/api/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
    else:
        import socket

        from worker.tasks import app

        ok = bool(app.control.ping(destination=[f"{args.worker}@{socket.gethostname()}"], timeout=5))
    print("healthy" if ok else "unhealthy")
    return 0 if ok else 1


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
    w.add_argument("--name", help="worker name (default gatlab-<pid>); `gatlab health --worker NAME` pings it")
    w.set_defaults(func=cmd_worker)
    sb = sub.add_parser("submit", help="POST a run config to a server")
    sb.add_argument("config")
    sb.add_argument("--server", default="http://127.0.0.1:8000")
    sb.add_argument("--experiment")
    sb.add_argument("--tag", action="append")
    sb.set_defaults(func=cmd_submit)
    h = sub.add_parser("health", help="exit 0 if the API or a worker on this host is healthy (container health checks)")
    hg = h.add_mutually_exclusive_group(required=True)
    hg.add_argument("--api", metavar="URL")
    hg.add_argument("--worker", metavar="NAME")
    h.set_defaults(func=cmd_health)
    st = sub.add_parser("setup", help="create the first admin of a lab server and print their API token")
    st.add_argument("name")
    st.add_argument("--password-stdin", action="store_true", help="also set a password, read from stdin")
    st.set_defaults(func=cmd_setup)
    us = sub.add_parser("users", help="manage users and API tokens (lab server)")
    us.add_argument("action", choices=["create", "list", "token", "tokens", "revoke", "password", "disable"],
                    help="create NAME | list | token NAME (a new one) | tokens NAME | revoke TOKEN_ID | "
                         "password NAME (from stdin) | disable NAME")
    us.add_argument("name", nargs="?", default="")
    us.add_argument("--admin", action="store_true")
    us.add_argument("--label", default="", help="a label for the new token")
    us.add_argument("--password-stdin", action="store_true", help="also set a password, read from stdin")
    us.set_defaults(func=cmd_users)
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
