"""Every import is a declared dependency of the part that needs it, and every shipped module imports
in the environment the suite runs in (CI: a brand-new virtual environment holding only what
`pyproject.toml` declares, at the versions of `requirements-lock.txt`)."""

import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (tier, source folders, extras that tier may NOT import from)
TIERS = {
    # The service (API, migrations, user commands) is what the slim API image installs: no extra.
    "service": (["backend"], "worker,test,bench,mutation"),
    # Training code may use the service's dependencies and the worker extra, nothing more.
    "worker": (["backend", "worker"], "test,bench,mutation"),
}


def deptry(*args: str, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess:
    """deptry as a process, its report (written to stderr) in .stdout."""
    return subprocess.run(
        [sys.executable, "-m", "deptry", *args, "--config", str(config), "--no-ansi"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def test_every_import_anywhere_is_declared():
    """Shipped code, tests and benchmarks: nothing missing (DEP001), nothing only there by
    accident of another package (DEP003), nothing declared and unused (DEP002)."""
    r = deptry(".")
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_imports_only_what_its_install_declares(tier):
    folders, forbidden = TIERS[tier]
    r = deptry(*folders, "--optional-dependencies-dev-groups", forbidden, "--ignore", "DEP002")
    assert r.returncode == 0, r.stdout


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


LOCK = {
    _norm(n): v
    for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements-lock.txt").read_text(), re.M)
}


def test_the_lock_pins_every_declared_dependency():
    declared = {_norm(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in importlib.metadata.requires("gatlab")}
    assert declared - set(LOCK) == set(), "declared but not locked: run ./scripts/lock"
    assert LOCK["torch"] == "2.14.1" and LOCK["torchvision"] == "0.29.1"


def test_the_environment_holds_exactly_the_locked_versions():
    """What the suite runs on is what the lock says (pip and setuptools come with the venv)."""
    installed = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    off = {
        n: (v, LOCK.get(n))
        for n, v in installed.items()
        if n not in ("gatlab", "pip", "setuptools") and LOCK.get(n) != v
    }
    assert not off, f"installed (version, locked version): {off}"


def _without(text: str, line: str) -> str:
    assert line in text, line
    return text.replace(line, "")


def test_the_check_fails_when_a_dependency_is_not_declared(tmp_path):
    """The check can fail: drop tqdm (imported by the CLI's progress bar) from the declarations."""
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(_without((ROOT / "pyproject.toml").read_text(), '    "tqdm>=4.66",\n'))
    r = deptry(".", config=cfg)
    assert r.returncode == 1
    assert re.search(r"worker/gat/recorder\.py:\d+:\d+: DEP00[13] 'tqdm'", r.stdout), r.stdout


def test_the_tier_check_fails_when_the_service_imports_a_worker_dependency(tmp_path):
    """Declare pyyaml in the worker extra only: the service (which reads YAML) would then miss it."""
    text = _without((ROOT / "pyproject.toml").read_text(), '    "pyyaml>=6",\n')
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(text.replace('    "tqdm>=4.66",\n', '    "tqdm>=4.66",\n    "pyyaml>=6",\n'))
    folders, forbidden = TIERS["service"]
    r = deptry(*folders, "--optional-dependencies-dev-groups", forbidden, "--ignore", "DEP002", config=cfg)
    assert r.returncode == 1
    assert "DEP004 'yaml' imported but declared as a dev dependency" in r.stdout, r.stdout


def _shipped_modules() -> list[str]:
    names = []
    for pkg in ("backend", "worker"):
        for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}."):
            # Alembic's env.py and revisions run against Alembic's context when Alembic loads them
            # (tests/service run every migration on PostgreSQL and SQLite); importing them bare fails.
            if not m.name.startswith("labcore.migrations"):
                names.append(m.name)
    return names


def test_every_shipped_module_imports():
    assert len(_shipped_modules()) > 30
    code = "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)"
    r = subprocess.run(
        [sys.executable, "-c", code, *_shipped_modules()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr


def test_the_package_is_installed_from_this_checkout():
    """The suite tests the code it was installed from (an editable install of this checkout)."""
    assert Path(importlib.import_module("worker").__file__).resolve().is_relative_to(ROOT)
