"""`gatlab`: the one command line of GAT Lab, and its service commands.

The service:   gatlab up | submit CONFIG | db upgrade | health | methods
Users:         gatlab setup ADMIN | users create|list|token|tokens|revoke|password|disable
Training (worker/cli.py, the `worker` install): gatlab train | eval | export | worker

`main` dispatches: a training command goes to `worker.cli`, which the slim API image does not ship.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import uvicorn
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from labcore import auth
from labcore.config import get_settings
from labcore.db import session_scope
from labcore.methods import methods_table
from labcore.migrate import upgrade
from labcore.models import ApiToken, User
from labcore.queue import worker_alive

log = logging.getLogger("gatlab")
# The training tier's commands (worker/cli.py), with their one-line help for `gatlab --help`.
WORKER_COMMANDS = {
    "train": "train one run locally into a run directory",
    "eval": "run the robustness panel on a finished run directory",
    "export": "write the trained model as TorchScript",
    "worker": "start one worker for the configured broker and database",
}


class CliError(Exception):
    """A user error: printed as one message, exit status 2."""


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
            raise CliError(
                f"refusing to serve {args.host} with GATLAB_AUTH=false: bind 127.0.0.1, or turn auth on"
            )
        auth_line = "auth off: embedded mode, local use only"
    else:
        auth_line = "auth on: sign in with a token from `gatlab setup` / `gatlab users create`"
    upgrade()
    worker = subprocess.Popen([sys.executable, "-m", "labcore.cli", "worker"], env=os.environ.copy())
    print(
        f"GAT Lab on http://{args.host}:{args.port}  (database {s.db_url.split('@')[-1]}, "
        f"broker {s.broker.split('@')[-1]}, worker pid {worker.pid}; {auth_line})",
        flush=True,
    )
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


def cmd_submit(args) -> int:
    raw = yaml.safe_load(Path(args.config).read_text()) if Path(args.config).is_file() else None
    if not isinstance(raw, dict):
        raise CliError(f"config file not found or not a mapping: {args.config}")
    body = {"config": raw, "experiment": args.experiment, "tags": args.tag or []}
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


def _api(server: str, method: str, path: str, **kw) -> httpx.Response:
    token = os.environ.get("GATLAB_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, f"{server.rstrip('/')}{path}", headers=headers, timeout=60, **kw)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {server}: {e}") from e
    if r.status_code == 401:
        raise CliError(f"{server} needs sign-in: set GATLAB_TOKEN to a token from `gatlab users create`")
    return r


def cmd_study(args) -> int:
    """`gatlab study run FILE`: submit a study (or, if it exists, queue what it still lacks: new
    seeds, failed runs), wait for its runs, print its report."""
    design = yaml.safe_load(Path(args.file).read_text()) if Path(args.file).is_file() else None
    if not isinstance(design, dict):
        raise CliError(f"study file not found or not a mapping: {args.file}")
    r = _api(args.server, "POST", "/api/studies", json=design)
    if r.status_code == 409:  # the study exists: extend it to this file's seeds, retry what failed
        found = [
            x for x in _api(args.server, "GET", "/api/studies").json() if x["name"] == design.get("name")
        ]
        if not found:
            raise CliError(r.json()["detail"])
        r = _api(
            args.server,
            "POST",
            f"/api/studies/{found[0]['id']}/extend",
            json={"seeds": design.get("seeds", [0])},
        )
    if r.status_code == 422:
        lines = [f"{'.'.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in r.json()["detail"]]
        raise CliError(f"{args.file}: invalid study\n  " + "\n  ".join(lines))
    if r.status_code >= 400:
        raise CliError(f"server answered {r.status_code}: {r.text[:500]}")
    study = r.json()
    print(
        f"study {study['id']} {study['name']}: {study['created']} runs queued, {study['progress']['total']} in all",
        file=sys.stderr,
    )
    while not args.no_wait:
        view = _api(args.server, "GET", f"/api/studies/{study['id']}").json()
        p = view["progress"]
        left = p.get("queued", 0) + p.get("running", 0)
        eta = f", ETA {view['eta_s']:.0f} s" if view["eta_s"] else ""
        print(f"  {', '.join(f'{k} {v}' for k, v in p.items())}{eta}", file=sys.stderr)
        if not left:
            break
        time.sleep(args.poll)
    emit(
        _api(args.server, "GET", f"/api/studies/{study['id']}/report", params={"format": args.format}).text,
        args.out,
    )
    return 0


def emit(text: str, out: str | None) -> None:
    """A report to the file `out`, or to stdout."""
    if out:
        try:
            Path(out).write_text(text)
        except OSError as e:
            raise CliError(f"--out: cannot write {out}: {e.strerror}") from e
        print(f"report written to {out}", file=sys.stderr)
    else:
        print(text, end="")


def _wait_for_database(url: str, wait_s: float) -> None:
    """Connect until the database answers, for at most `wait_s` seconds: a database container can
    pass its health check (its Unix socket) while it still initialises and refuses TCP."""
    engine = create_engine(url, poolclass=NullPool)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with engine.connect():
                return
        except OperationalError as e:
            if time.monotonic() >= deadline:
                raise CliError(f"the database did not answer within {wait_s:.0f} s: {e.orig}") from e
            log.warning("waiting for the database: %s", e.orig)
            time.sleep(1)
        finally:
            engine.dispose()


def cmd_db(args) -> int:
    _wait_for_database(get_settings().db_url, args.wait)
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
    upgrade()  # idempotent: user commands work on a database that was never started
    with session_scope() as s:
        try:
            if args.action == "create":
                user = auth.create_user(s, name=args.name, admin=args.admin, password=_password(args))
                _, secret = auth.create_token(s, user=user, label=args.label)
                _print_token(user, secret)
            elif args.action == "list":
                for u in s.scalars(select(User).order_by(User.id)):
                    live = s.scalars(
                        select(ApiToken).where(ApiToken.user_id == u.id, ApiToken.revoked_at.is_(None))
                    ).all()
                    print(
                        f"{u.id:>4}  {u.name:<20} {'admin' if u.is_admin else 'user ':<6} "
                        f"{'disabled' if u.disabled else 'active':<9} {len(live)} live token(s)"
                    )
            elif args.action == "token":
                user = auth.get_user(s, args.name)
                _, secret = auth.create_token(s, user=user, label=args.label)
                _print_token(user, secret)
            elif args.action == "tokens":
                user = auth.get_user(s, args.name)
                for t in s.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)):
                    print(
                        f"{t.id:>4}  {t.prefix}...  {t.label or '-':<16} created {t.created_at:%Y-%m-%d %H:%M}  "
                        f"{'REVOKED' if t.revoked_at else 'live'}"
                    )
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
    """Exit 0 if the API answers /api/health, or the named worker on this host is alive: its
    liveness file is fresh (busy or idle; see labcore.queue.alive_file)."""
    if args.api:
        try:
            ok = httpx.get(f"{args.api.rstrip('/')}/api/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
    else:
        ok = worker_alive(get_settings(), args.worker)
    print("healthy" if ok else "unhealthy")
    return 0 if ok else 1


def _study_parser(sub) -> None:
    sy = sub.add_parser("study", help="run a study (methods x seeds) on a server and print its report")
    sy.add_argument("action", choices=["run"])
    sy.add_argument("file", help="the study's design (YAML), e.g. studies/defense-digits.yaml")
    sy.add_argument("--server", default="http://127.0.0.1:8000")
    sy.add_argument("--format", choices=["md", "latex", "csv", "json"], default="md")
    sy.add_argument("--out", help="write the report here (default: stdout)")
    sy.add_argument("--no-wait", action="store_true", help="submit and print the report as it stands")
    sy.add_argument("--poll", type=float, default=10.0, help="seconds between progress lines")
    sy.add_argument(
        "--local",
        action="store_true",
        help="run it here without a server, one run after another (training install)",
    )
    sy.set_defaults(func=cmd_study)


def build_parser() -> argparse.ArgumentParser:
    """The service commands' parser; the training commands are listed in its help."""
    listing = "\n".join(f"  {name:<10} {text}" for name, text in WORKER_COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="gatlab",
        description="GAT Lab: gradient adversarial training.",
        epilog=f"training commands (the worker install):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("methods", help="list scenarios, methods and their knobs")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)
    u = sub.add_parser("up", help="start the API and one worker (embedded default: SQLite, no Redis)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.set_defaults(func=cmd_up)
    sb = sub.add_parser("submit", help="POST a run config to a server")
    sb.add_argument("config")
    sb.add_argument("--server", default="http://127.0.0.1:8000")
    sb.add_argument("--experiment")
    sb.add_argument("--tag", action="append")
    sb.set_defaults(func=cmd_submit)
    _study_parser(sub)
    h = sub.add_parser(
        "health", help="exit 0 if the API or a worker on this host is healthy (container health checks)"
    )
    hg = h.add_mutually_exclusive_group(required=True)
    hg.add_argument("--api", metavar="URL")
    hg.add_argument("--worker", metavar="NAME")
    h.set_defaults(func=cmd_health)
    st = sub.add_parser("setup", help="create the first admin of a lab server and print their API token")
    st.add_argument("name")
    st.add_argument("--password-stdin", action="store_true", help="also set a password, read from stdin")
    st.set_defaults(func=cmd_setup)
    us = sub.add_parser("users", help="manage users and API tokens (lab server)")
    us.add_argument(
        "action",
        choices=["create", "list", "token", "tokens", "revoke", "password", "disable"],
        help="create NAME | list | token NAME (a new one) | tokens NAME | revoke TOKEN_ID | "
        "password NAME (from stdin) | disable NAME",
    )
    us.add_argument("name", nargs="?", default="")
    us.add_argument("--admin", action="store_true")
    us.add_argument("--label", default="", help="a label for the new token")
    us.add_argument("--password-stdin", action="store_true", help="also set a password, read from stdin")
    us.set_defaults(func=cmd_users)
    d = sub.add_parser("db", help="database maintenance")
    d.add_argument("action", choices=["upgrade"])
    d.add_argument(
        "--wait", type=float, default=60.0, metavar="S", help="retry connecting this long (default 60 s)"
    )
    d.set_defaults(func=cmd_db)
    return p


def trains(argv: list[str]) -> bool:
    """A command for the training install: a worker command, or a study run here (--local)."""
    return bool(argv) and (argv[0] in WORKER_COMMANDS or (argv[0] == "study" and "--local" in argv))


def training_cli():
    """The training tier's commands, loaded by name only when one is asked for: the API image ships no
    worker/ and no torch, and this shared package imports neither tier."""
    return importlib.import_module("worker.cli")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if trains(argv):
        try:
            training = training_cli()
        except ImportError:
            print(
                f"gatlab: error: '{argv[0]}' needs the training install: "
                "pip install -c requirements-lock.txt -e '.[worker]'",
                file=sys.stderr,
            )
            return 2
        return training.main(argv)
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
    sys.exit(main())
