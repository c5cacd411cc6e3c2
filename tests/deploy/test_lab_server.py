"""The lab server for real: the README's "Lab server" section, command by command, on Docker.

`prepare.sh` installs what this machine lacks (the engine, the Compose v2 plugin, local stand-ins
for base images the public registry cannot give). Then the shipped images are built and the
shipped compose files run; the only test override drops the GPU reservation (compose.test.yml),
and the ports move through `.env` as a user's would. The README's commands are read from the
README itself, so a command that drifts from what works fails here. Everything the test starts is
removed by id at the end (containers, volumes, networks; the daemon too if the test started it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from bench._common import free_port
from tests.service.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"
PROJECTS = ("gatlab", "gatlab-gpu")  # the `name:` of docker-compose.yml and docker-compose.worker.yml
PROJECT_LABEL = "com.docker.compose.project=gatlab"
IMAGES = ("gatlab-api:latest", "gatlab-worker:latest")  # the images built; kept as the next build's cache
SERVER_FILES = "docker-compose.yml:tests/deploy/compose.test.yml"
REMOTE_OVERRIDE = "tests/deploy/compose.worker.test.yml"
SERVICES_BIND = "127.0.0.2"  # the machine's own PostgreSQL and Redis hold 127.0.0.1:5432 and :6379
DOCKERD_PIDFILE = "/run/gatlab-test-dockerd.pid"
WORKER_UID = 1000
# ~25 ms a step in the worker container on 2 cores: about 30 s in all
RUN = tiny_config(train={"epochs": 30, "batch_size": 32, "stats_every": 50}, eval={"panel": "none"})
STEPS_PER_EPOCH = 41  # digits' training split at batch 32
FINAL = ("succeeded", "failed", "cancelled")


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Lab server", 1)[1].split("\n## ", 1)[0]


def readme(prefix: str, *, exact: bool = False) -> str:
    """The one command of the README's lab-server section (a code line or an inline `command`)
    that starts with `prefix` (or is `prefix`, with `exact`)."""
    section = readme_section()
    lines = [
        ln.strip() for ln in section.splitlines() if ln.startswith("    ") and not ln.startswith("    -")
    ]
    lines += re.findall(r"`([^`\n]+)`", section)
    found = sorted({ln for ln in lines if (ln == prefix if exact else ln.startswith(prefix))})
    assert len(found) == 1, f"the README's lab-server section should hold one command {prefix!r}: {found}"
    return found[0]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"docker {' '.join(args)}:\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r


def ids(kind: str, project: str) -> list[str]:
    """Ids (names for volumes) of what compose made for `project`, found by its label."""
    cmd = {"container": ["ps", "-aq"], "volume": ["volume", "ls", "-q"], "network": ["network", "ls", "-q"]}
    out = docker(*cmd[kind], "--filter", f"label=com.docker.compose.project={project}").stdout
    return out.split()


def image_ids() -> set[str]:
    """The ids of the images the compose files build (gatlab-api, gatlab-worker), where they exist."""
    r = docker("image", "inspect", "-f", "{{.Id}}", *IMAGES, check=False)
    return set(r.stdout.split())


def remove_by_id(project: str) -> None:
    for c in ids("container", project):
        docker("rm", "-f", "-v", c, check=False)
    for v in ids("volume", project):
        docker("volume", "rm", "-f", v, check=False)
    for n in ids("network", project):
        docker("network", "rm", n, check=False)


class Lab:
    """A copy of this tree where the README's commands run, with the test's compose files."""

    def __init__(self, path: Path, port: int):
        self.path, self.port = path, port
        self.env = {**os.environ, "COMPOSE_FILE": SERVER_FILES}
        self.token = self.model_sha = ""
        self.run_id = 0
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def sh(self, command: str, *, timeout: float = 300, check: bool = True, env: dict | None = None):
        r = subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert not check or r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def states(self) -> dict[str, dict]:
        out = self.sh("docker compose ps -a --format json").stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(ln) for ln in out.splitlines() if ln]
        return {r["Service"]: r for r in rows}

    def wait_healthy(self, services: tuple[str, ...], timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(s, {}).get("Health") == "healthy" for s in services):
                return
            if time.monotonic() > deadline:
                logs = self.sh("docker compose logs --tail 30", check=False).stdout
                pytest.fail(f"not all of {services} became healthy: {states}\n{logs[-4000:]}")
            time.sleep(2)

    def run(self, run_id: int) -> dict:
        r = self.http.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_run(self, run_id: int, until, what: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while not until(run := self.run(run_id)):
            if run["status"] in FINAL or time.monotonic() > deadline:
                logs = self.sh("docker compose logs --tail 40 worker", check=False).stdout
                pytest.fail(f"run {run_id} never {what}: {run['status']} {run.get('error')}\n{logs[-4000:]}")
            time.sleep(0.5)
        return run

    def submit(self, config: dict, token: str) -> int:
        """The README's `GATLAB_TOKEN=... gatlab submit run.yaml --server http://SERVER:8000`."""
        (self.path / "run.yaml").write_text(yaml.safe_dump(config))
        line = readme("GATLAB_TOKEN=... gatlab submit ")
        assert line == "GATLAB_TOKEN=... gatlab submit run.yaml --server http://SERVER:8000", line
        words = line.replace("http://SERVER:8000", f"http://127.0.0.1:{self.port}").split()[1:]
        r = subprocess.run(
            [shutil.which("gatlab") or "gatlab", *words[1:]],
            cwd=self.path,
            env={**self.env, "GATLAB_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        submitted = re.search(r"^run (\d+) (queued|running): ", r.stdout, re.M)  # a worker may be quick
        assert r.returncode == 0 and submitted, r.stdout + r.stderr
        return int(submitted.group(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    started_daemon = subprocess.run(["docker", "info"], capture_output=True).returncode != 0
    prep = subprocess.run(
        ["bash", str(HERE / "prepare.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "DOCKERD_PIDFILE": DOCKERD_PIDFILE},
    )
    print(prep.stdout)
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    for project in PROJECTS:  # never touch a lab that runs here already
        assert not ids("container", project), (
            f"compose project {project} exists on this daemon: not a test machine?"
        )
    # `git clone <this repository> gatlab && cd gatlab`: this tree as it stands (committed or not)
    assert readme("git clone ").startswith("git clone <this repository> gatlab && cd gatlab")
    path = tmp_path_factory.mktemp("server") / "gatlab"
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, path / f)
    lab = Lab(path, free_port())
    images_before = image_ids()
    try:
        lab.sh(readme("cp .env.example .env"))  # the README's secrets, as written
        env = (path / ".env").read_text()
        assert re.search(r"^POSTGRES_PASSWORD=[0-9a-f]{48}$", env, re.M), "the README's sed set no password"
        for key, value in {
            "GATLAB_PORT": str(lab.port),
            "GATLAB_BIND": "127.0.0.1",
            "GATLAB_SERVICES_BIND": SERVICES_BIND,
        }.items():
            env = re.sub(rf"^{key}=.*$", f"{key}={value}", env, flags=re.M)
        (path / ".env").write_text(env)
        t = time.monotonic()
        lab.sh(readme("docker compose up -d --build"), timeout=1200)
        print(f"deploy: docker compose up -d --build took {time.monotonic() - t:.0f} s")
        setup = lab.sh(readme("docker compose run --rm api gatlab setup admin"), timeout=120)
        lab.token = setup.stdout.strip().splitlines()[-1]
        lab.http.headers["Authorization"] = f"Bearer {lab.token}"
        yield lab
    finally:
        ARTIFACTS.mkdir(exist_ok=True)  # the stack's logs, for a failure's post-mortem
        lab.sh(f"docker compose logs --no-color > {ARTIFACTS / 'deploy-compose.log'} 2>&1", check=False)
        for project in PROJECTS:
            remove_by_id(project)
        # the images this run's build replaced, and the untagged twin compose builds for `migrate`
        dangling = docker("images", "-q", "--filter", "dangling=true", "--filter", f"label={PROJECT_LABEL}")
        for image in (images_before - image_ids()) | set(dangling.stdout.split()):
            docker("rmi", image, check=False)
        shutil.rmtree(path, ignore_errors=True)
        if started_daemon and Path(DOCKERD_PIDFILE).exists():
            subprocess.run(["kill", Path(DOCKERD_PIDFILE).read_text().strip()], check=False)


def test_every_service_is_healthy_and_the_data_directory_docker_made_is_the_workers(lab):
    lab.wait_healthy(("postgres", "redis", "api", "worker"))
    assert lab.states()["migrate"]["State"] == "exited"  # the one-shot ran, and the API waited for it
    data = lab.path / "data"  # made by the Docker daemon (as root) for the worker's bind mount
    assert data.is_dir() and data.stat().st_uid == WORKER_UID, f"./data is owned by uid {data.stat().st_uid}"
    # The worker runs as uid 1000 and can make a dataset folder, as `dataset.download: true` does.
    assert lab.sh("docker compose exec -T worker stat -c %u /proc/1").stdout.strip() == str(WORKER_UID)
    # The worker image ships the shared core and the trainer, no HTTP layer and no dashboard.
    shipped = lab.sh("docker compose exec -T worker ls /app").stdout.split()
    assert {"labcore", "worker"} <= set(shipped) and not {"backend", "frontend"} & set(shipped), shipped
    lab.sh("docker compose exec -T -u gatlab worker mkdir -p /lab/data/MNIST/raw")
    assert (data / "MNIST" / "raw").is_dir()
    assert lab.http.get("/api/health").json()["database"] == "postgresql"
    assert "GAT Lab" in lab.http.get("/").text
    # sign-in is required: the same request without the token is refused
    assert httpx.post(f"http://127.0.0.1:{lab.port}/api/runs", json={"config": RUN}).status_code == 401


def test_a_run_stays_healthy_survives_a_worker_restart_and_its_artifacts_download(lab):
    run_id = lab.submit(RUN, lab.token)
    lab.wait_run(run_id, lambda r: r["status"] == "running" and r["step"] >= 10, "started")
    # Busy training, the worker is still healthy: the exact check Docker runs in the container.
    check = yaml.safe_load((lab.path / "docker-compose.yml").read_text())["services"]["worker"]["healthcheck"]
    assert check["test"][0] == "CMD"
    health = lab.sh(f"docker compose exec -T worker {' '.join(check['test'][1:])}", check=False)
    assert health.returncode == 0, f"the worker is unhealthy mid-run: {health.stdout} {health.stderr}"
    assert lab.run(run_id)["status"] == "running"
    # After the checkpoint of epoch 2, restart the worker: it hands the run back and resumes it.
    lab.wait_run(run_id, lambda r: r["step"] >= 2 * STEPS_PER_EPOCH + 5, "passed epoch 2")
    lab.sh("docker compose restart worker", timeout=120)
    run = lab.wait_run(run_id, lambda r: r["status"] in FINAL, "finished after the restart", timeout=300)
    assert run["status"] == "succeeded", run.get("traceback")
    assert run["retry_count"] == 0  # a handed-back run spends no retry
    log = lab.http.get(f"/api/runs/{run_id}/artifacts/run.log").text
    resumed = re.search(rf"run {run_id} resumes from its checkpoint at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 2 * STEPS_PER_EPOCH, log[-2000:]
    total = RUN["train"]["epochs"] * STEPS_PER_EPOCH
    series = lab.http.get(
        f"/api/runs/{run_id}/metrics", params={"keys": "train/loss", "max_points": 100_000}
    ).json()["series"]
    assert series["train/loss"]["step"] == list(range(1, total + 1))  # none lost, none twice
    names = {a["name"] for a in lab.http.get(f"/api/runs/{run_id}/artifacts").json()}
    assert {"model.pt", "checkpoint.pt", "run.log"} <= names
    model = lab.http.get(f"/api/runs/{run_id}/artifacts/model.pt")
    (lab.path / "model.pt").write_bytes(model.content)
    assert torch.load(lab.path / "model.pt", weights_only=True)  # a state dict, loaded without pickle
    lab.model_sha = hashlib.sha256(model.content).hexdigest()
    lab.run_id = run_id


def test_a_worker_from_the_remote_worker_file_takes_a_run(lab):
    line = readme("docker compose -f docker-compose.worker.yml up -d --build")
    command = line.replace(
        "-f docker-compose.worker.yml", f"-f docker-compose.worker.yml -f {REMOTE_OVERRIDE}"
    )
    remote = {**lab.env, "GATLAB_SERVER": SERVICES_BIND, "GATLAB_RUNS_DIR": "gatlab_runs"}
    remote.pop("COMPOSE_FILE")
    compose = f"docker compose -f docker-compose.worker.yml -f {REMOTE_OVERRIDE}"
    try:
        lab.sh("docker compose stop worker", timeout=120)  # only the remote worker is left to take it
        lab.sh(command, env=remote, timeout=600)
        hostname = "python -c 'import socket; print(socket.gethostname())'"
        host = lab.sh(f"{compose} exec -T worker {hostname}", env=remote).stdout.strip()
        run_id = lab.submit({**RUN, "train": {**RUN["train"], "epochs": 2}}, lab.token)
        run = lab.wait_run(run_id, lambda r: r["status"] in FINAL, "finished on the remote worker")
        assert run["status"] == "succeeded", run.get("traceback")
        assert run["worker_host"].startswith(f"{host}:"), run["worker_host"]
        assert (
            lab.sh(
                f"{compose} exec -T worker gatlab health --worker gpu0", env=remote, check=False
            ).returncode
            == 0
        )
        # the run's files are on the shared runs directory, where the server's API serves them
        assert lab.http.get(f"/api/runs/{run_id}/artifacts/model.pt").status_code == 200
    finally:
        lab.sh(f"{compose} down", env=remote, check=False, timeout=120)
        lab.sh("docker compose start worker", check=False, timeout=120)


def test_backup_and_restore_bring_back_a_deleted_run(lab):
    run_id = lab.run_id
    assert run_id, "needs the run of the restart test"
    for prefix in (
        "docker compose exec -T postgres pg_dump",
        'docker run --rm -v gatlab_runs:/runs -v "$PWD":/out',
    ):
        lab.sh(readme(prefix), timeout=120)
    dumps, archives = sorted(lab.path.glob("gatlab-*.dump")), sorted(lab.path.glob("runs-*.tgz"))
    assert len(dumps) == 1 and len(archives) == 1 and dumps[0].stat().st_size > 1000
    date = dumps[0].name[len("gatlab-") : -len(".dump")]

    assert lab.http.delete(f"/api/runs/{run_id}").status_code == 204
    assert lab.http.get(f"/api/runs/{run_id}").status_code == 404

    lab.sh("docker compose stop", timeout=180)  # "Restore into a stopped lab"
    for prefix in (
        "docker compose up -d postgres",
        "docker compose exec -T postgres pg_restore",
        'docker run --rm -v gatlab_runs:/runs -v "$PWD":/in busybox tar xzf',
    ):
        lab.sh(readme(prefix).replace("DATE", date), timeout=180)
    lab.sh(readme("docker compose up -d", exact=True), timeout=300)
    lab.wait_healthy(("postgres", "redis", "api", "worker"))
    run = lab.run(run_id)
    assert run["status"] == "succeeded"
    model = lab.http.get(f"/api/runs/{run_id}/artifacts/model.pt")
    assert model.status_code == 200 and hashlib.sha256(model.content).hexdigest() == lab.model_sha


def test_down_v_removes_the_stack_and_its_volumes(lab):
    lab.sh("docker compose down -v", timeout=180)
    assert not ids("container", "gatlab") and not ids("volume", "gatlab") and not ids("network", "gatlab")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{lab.port}/api/health", timeout=5)
