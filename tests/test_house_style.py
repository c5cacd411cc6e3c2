"""House rules that a tool keeps: ruff's format and lint, the tiers' import boundaries, short functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = (
    "backend",
    "fastapi",
    "starlette",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "httpx",
    "psycopg",
    "redis",
    "uvicorn",
)


def imports(path: Path) -> list[tuple[str, str]]:
    """(module imported, enclosing function or '') for each import statement of a file."""
    found = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Import):
                found.extend((a.name, func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.module, func))
            visit(child, name)

    visit(ast.parse(path.read_text()), "")
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("args", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff(args):
    r = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_service_tier_never_imports_the_worker():
    """The API image ships backend/ only: the one way from backend to worker is the `gatlab`
    dispatcher handing a training command over (and it reports a missing worker install)."""
    allowed = {("backend/cli.py", "main"), ("backend/cli.py", "parser_for")}
    for path in sources("backend"):
        rel = path.relative_to(ROOT).as_posix()
        for module, func in imports(path):
            if module.split(".")[0] == "worker":
                assert (rel, func) in allowed, f"{rel} imports {module} in {func or 'the module'}"


def test_the_core_has_no_web_database_or_queue_imports():
    for path in sources("worker/gat"):
        for module, _ in imports(path):
            assert module.split(".")[0] not in WEB, f"{path.relative_to(ROOT)} imports {module}"


def test_importing_the_api_loads_neither_torch_nor_the_worker():
    code = "import sys, backend.main, backend.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'worker'}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_no_function_is_longer_than_a_screen():
    """About 50 lines at most; migrations and the benchmarks' `main` (a report, top to bottom) aside."""
    long = []
    for folder in ("backend", "worker", "bench"):
        for path in sources(folder):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                    folder == "bench" and node.name == "main"
                ):
                    if node.end_lineno - node.lineno + 1 > 55:
                        long.append(
                            f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                        )
    assert not long, long
