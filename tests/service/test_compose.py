"""docker-compose.yml cannot drift from the code: its environment, volumes, commands and health
checks are checked against the settings the code reads, and its exact commands (migrations, first
admin, API, worker, health checks) run here as processes against the real PostgreSQL and Redis
and carry a job end to end. (No Docker engine on this machine: the images are not built here.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from bench._common import free_port
from labcore.config import Settings
from labcore.queue import ALIVE_STALE_S, alive_file
from labcore.run_config import DatasetConfig

from .conftest import REDIS_URL, tiny_config

ROOT = Path(__file__).resolve().parents[2]
FILES = {"server": ROOT / "docker-compose.yml", "remote": ROOT / "docker-compose.worker.yml"}
APP = {"server": ("migrate", "api", "worker"), "remote": ("worker",)}
VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def compose(which: str = "server") -> dict:
    return yaml.safe_load(FILES[which].read_text())


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (error: unset or empty)."""

    def sub(m):
        name, op, arg = m.groups()
        value = values.get(name, "")
        if op == "?" and not value:
            raise KeyError(f"{name} is required: {arg}")
        return value or (arg if op == "-" else "")

    return VAR.sub(sub, text)


def settings_env_names() -> set[str]:
    return {(f.validation_alias or name).upper() for name, f in Settings.model_fields.items()}


def example_env() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def argv(command) -> list[str]:
    words = shlex.split(command) if isinstance(command, str) else list(command)
    return words[1:] if words[0] in ("CMD", "CMD-SHELL") else words


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    for k in settings_env_names():
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings(_env_file=None)


SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "REDIS_PASSWORD": "pw",
    "GATLAB_SERVER": "lab.example",
    "GATLAB_RUNS_DIR": "/mnt/runs",
}


@pytest.mark.parametrize("which", ["server", "remote"])
def test_compose_environment_volumes_and_commands_match_the_code(which, monkeypatch):
    from tests.test_docs import parser_for

    services = compose(which)["services"]
    for name in APP[which]:
        svc = services[name]
        env = svc["environment"]
        unknown = set(env) - settings_env_names()
        assert not unknown, f"{name}: {unknown} are not settings the code reads (labcore/config.py)"
        assert ":?" in env["DATABASE_URL"] and ":?" in env["REDIS_URL"]  # passwords have no default
        s = settings_from({k: interpolate(v, SECRETS) for k, v in env.items()}, monkeypatch)
        assert (
            s.auth is True
            and s.database_url.startswith("postgresql+psycopg://")
            and s.broker.startswith("redis://")
        )
        mounts = {
            v.split(":")[1]: v.split(":")[0]
            for v in (interpolate(m, SECRETS) for m in svc.get("volumes", []))
        }
        if name in ("api", "worker"):
            assert str(s.runs_path) in mounts, f"{name} must mount the runs directory {s.runs_path}"
        if name == "worker":
            data_dir = s.data_path / DatasetConfig.model_fields["data_dir"].default
            assert str(data_dir) in mounts, (
                "the worker mounts datasets where a config's default data_dir points"
            )
            devices = svc["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
            assert len(devices[0].get("device_ids", [])) == 1  # one GPU per worker
        words = argv(svc["command"])
        if words[0] == "gatlab":
            parser_for(words[1:]).parse_args(
                words[1:]
            )  # exits (fails the test) on an unknown command or flag
        else:
            assert words[:2] == ["uvicorn", "backend.main:app"]
        if name != "migrate":
            check = argv(svc["healthcheck"]["test"])
            assert check[0] == "gatlab"
            parser_for(check[1:]).parse_args(check[1:])
            assert svc["restart"] == "unless-stopped"
        if name == "worker":  # its health check pings the name it runs under
            assert check[-1] == words[words.index("--name") + 1]
    if which == "server":
        assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services["migrate"]["restart"] == "no"
        assert (
            "--appendonly" in services["redis"]["command"]
            and "redisdata:/data" in services["redis"]["volumes"]
        )
        assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
        assert all("healthcheck" in services[n] for n in ("postgres", "redis", "api", "worker"))


def test_env_example_documents_every_variable_and_gives_no_secret_a_value():
    example = example_env()
    for path in FILES.values():
        for name, op, _ in VAR.findall(path.read_text()):
            assert name in example, f"{path.name} uses ${{{name}}}, missing from .env.example"
            if op == "?" and "PASSWORD" in name:
                assert example[name] == "", f"{name} is a secret: no value in .env.example"
    assert any(op == "?" for _, op, _ in VAR.findall(FILES["server"].read_text()))


def test_images_api_has_no_torch_nor_worker_worker_has_them_and_the_api_code_runs_without_them():
    api = (ROOT / "docker/api.Dockerfile").read_text()
    worker = (ROOT / "docker/worker.Dockerfile").read_text()
    code = "\n".join(line for line in api.splitlines() if not line.startswith("#"))
    assert "torch" not in code and "COPY worker" not in code and "COPY backend backend" in code
    assert (
        "COPY labcore labcore" in code and "COPY labcore labcore" in worker and "COPY worker worker" in worker
    )
    assert "COPY backend" not in worker and "COPY frontend" not in worker  # no routes, no dashboard
    assert "pip install -c requirements-lock.txt -e ." in api
    assert "pip install -c requirements-lock.txt -e '.[worker]'" in worker
    assert "pip install -c requirements-lock.txt torch torchvision" in worker
    lock = (ROOT / "requirements-lock.txt").read_text().splitlines()
    assert (
        "torch==2.14.1" in lock and "torchvision==0.29.1" in lock
    )  # both images install the lock's versions
    for svc in ("api", "migrate", "worker"):
        assert (ROOT / compose()["services"][svc]["build"]["dockerfile"]).is_file()
    blocker = (
        "import sys\nclass B:\n def find_spec(self, name, path=None, target=None):\n"
        "  if name.split('.')[0] in ('worker', 'torch', 'torchvision', 'numpy', 'sklearn', 'autoattack'):\n"
        "   raise ImportError('not in the API image: ' + name)\nsys.meta_path.insert(0, B())\n"
        "import backend.main, labcore.cli\nbackend.main.create_app()\n"
        "from labcore.methods import methods_table\nassert methods_table()\n"
        "assert labcore.cli.main(['users', 'list']) == 0\n"
        "assert labcore.cli.main(['train', 'x.yaml']) == 2\nprint('imports ok')\n"
    )
    env = {
        **os.environ,
        "GATLAB_HOME": str(Path(os.environ.get("TMPDIR", "/tmp")) / f"noth-{uuid.uuid4().hex[:6]}"),
    }
    env.pop("DATABASE_URL", None)
    r = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert r.returncode == 0 and "imports ok" in r.stdout, r.stderr[-2000:]
    assert "gatlab: error: 'train' needs the training install" in r.stderr


def run_argv(words: list[str], port: int) -> list[str]:
    """A compose command as a process here: the console scripts by module, the API on a free port."""
    head = {"gatlab": [sys.executable, "-m", "labcore.cli"], "uvicorn": [sys.executable, "-m", "uvicorn"]}[
        words[0]
    ]
    return head + [w.replace("8000", str(port)) for w in words[1:]]


def test_the_compose_commands_run_a_job_end_to_end(tmp_path, empty_pg_database):
    services = compose()["services"]
    lab, port = tmp_path / "lab", free_port()
    values = {
        "POSTGRES_PASSWORD": "unused",
        "REDIS_PASSWORD": "unused",
        "GATLAB_QUEUE": f"compose-{uuid.uuid4().hex[:8]}",
    }
    env = {k: v for k, v in os.environ.items() if k not in settings_env_names()}
    for k, v in services["api"]["environment"].items():  # the same anchor for migrate, api and worker
        env[k] = (
            interpolate(v, values).replace("/lab", str(lab), 1)
            if v.startswith("/lab")
            else interpolate(v, values)
        )
    # What a container sees under other names: PostgreSQL and Redis are on this machine.
    env.update(
        DATABASE_URL=empty_pg_database, REDIS_URL=REDIS_URL, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"
    )
    (lab / "runs").mkdir(parents=True)
    (lab / "data").mkdir()

    def call(words, **kw):
        return subprocess.run(
            run_argv(words, port), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, **kw
        )

    assert call(argv(services["migrate"]["command"])).returncode == 0
    setup = call(["gatlab", "setup", "admin"])  # the README's first-admin command
    assert setup.returncode == 0, setup.stderr
    token = setup.stdout.strip().splitlines()[-1]
    assert call(["gatlab", "setup", "eve"]).returncode == 2  # a second "first admin" is refused
    procs = []
    try:
        for name in ("api", "worker"):
            log = open(tmp_path / f"{name}.log", "w")
            procs.append(
                subprocess.Popen(
                    run_argv(argv(services[name]["command"]), port),
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for name in ("api", "worker"):  # the compose health checks, as they run in the containers
            check = argv(services[name]["healthcheck"]["test"])
            deadline = time.monotonic() + 90
            while call(check).returncode != 0:
                assert time.monotonic() < deadline, (
                    f"{name} never became healthy:\n" + (tmp_path / f"{name}.log").read_text()[-3000:]
                )
                time.sleep(1)
        assert call(["gatlab", "health", "--worker", "no-such-worker"]).returncode == 1  # the check can fail
        assert "auth on, 1 user(s)" in (tmp_path / "api.log").read_text()  # the start-up line says so
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        assert http.post("/api/runs", json={"config": tiny_config()}).status_code == 401  # auth is on
        http.headers["Authorization"] = f"Bearer {token}"
        long = http.post(
            "/api/runs", json={"config": tiny_config(train={"epochs": 500}, eval={"panel": "none"})}
        ).json()
        deadline = time.monotonic() + 120
        while (busy := http.get(f"/api/runs/{long['id']}").json())["step"] < 20:
            assert time.monotonic() < deadline and busy["status"] in ("queued", "running"), busy
            time.sleep(0.2)
        # Busy training (the solo pool answers no ping now), the worker is still healthy.
        assert call(argv(services["worker"]["healthcheck"]["test"])).returncode == 0
        assert http.get(f"/api/runs/{long['id']}").json()["status"] == "running"
        assert http.post(f"/api/runs/{long['id']}/cancel").status_code == 200
        run = http.post("/api/runs", json={"config": tiny_config(eval={"panel": "none"})}).json()
        assert run["owner"] == "admin"
        deadline = time.monotonic() + 180
        while (run := http.get(f"/api/runs/{run['id']}").json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
        assert run["status"] == "succeeded", run.get("traceback")
        assert (lab / "runs" / str(run["id"]) / "model.pt").is_file()  # on the runs volume
        assert (
            http.get("/").status_code == 200 and "GAT Lab" in http.get("/").text
        )  # the API serves the dashboard
        os.killpg(procs[1].pid, 9)  # a dead worker's liveness file goes stale: unhealthy
        procs[1].wait()
        alive = alive_file(Settings(_env_file=None, GATLAB_HOME=env["GATLAB_HOME"]), "gpu0")
        os.utime(alive, (time.time() - ALIVE_STALE_S - 1,) * 2)  # as it reads ALIVE_STALE_S later
        assert call(argv(services["worker"]["healthcheck"]["test"])).returncode == 1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait()


def test_migrate_waits_for_the_database_a_bounded_time_then_says_why(tmp_path):
    """`gatlab db upgrade` (the migrate service) retries a database that does not answer yet, for
    --wait seconds, then exits 2 naming the cause: never a traceback, never forever."""
    env = {k: v for k, v in os.environ.items() if k not in settings_env_names()}
    env.update(
        DATABASE_URL=f"postgresql+psycopg://gatlab@127.0.0.1:{free_port()}/gatlab", PYTHONPATH=str(ROOT)
    )
    r = subprocess.run(
        [sys.executable, "-m", "labcore.cli", "db", "upgrade", "--wait", "3"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("waiting for the database") >= 2  # it retried (once a second), then gave up
    assert "gatlab: error: the database did not answer within 3 s" in r.stderr and "Traceback" not in r.stderr
