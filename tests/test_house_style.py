"""House rules that a tool keeps: ruff's format and lint, the tiers' import boundaries, short functions."""

import ast
import re
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


TIERS = ("labcore", "backend", "worker", "bench")
# Which first-party tiers each tier may import (every import statement, a function's too). labcore is
# the torch-free core both services share; backend is the HTTP layer; worker trains and evaluates.
MAY_IMPORT = {"labcore": {"labcore"}, "backend": {"labcore", "backend"}, "worker": {"labcore", "worker"}}


def first_party_imports(path: Path) -> list[tuple[str, str]]:
    """(module, tier) of each import of this tree's own code in a file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found += [(n, n.split(".")[0]) for n in names if n.split(".")[0] in TIERS]
    return found


@pytest.mark.parametrize("tier", sorted(MAY_IMPORT))
def test_each_tier_imports_only_the_tiers_below_it(tier):
    """The HTTP layer imports the shared core, never the reverse; the worker never imports backend/
    (its image ships no routes); the core imports neither (the `gatlab` dispatcher loads the training
    commands by name, so the API image runs without worker/)."""
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(tier)
        for module, other in first_party_imports(path)
        if other not in MAY_IMPORT[tier]
    ]
    assert not wrong, wrong


def test_no_two_modules_import_each_other_even_by_way_of_others():
    """No import circle among the shipped modules (a function's imports count: they are a circle too)."""
    modules = {
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
        for tier in ("labcore", "backend", "worker")
        for p in sources(tier)
    }
    edges = {
        m: {n for n, _ in first_party_imports(p) if n in modules and n != m and not m.startswith(n + ".")}
        for m, p in modules.items()
    }
    state: dict[str, int] = {}

    def circle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return [*path, m, n]
            if n not in state and (found := circle_from(n, [*path, m])):
                return found
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state:
            assert (found := circle_from(m, [])) is None, " -> ".join(found)


def test_only_the_lifecycle_module_changes_a_runs_status():
    """Every status transition in one module (labcore/lifecycle.py): no other shipped module assigns
    `.status`, passes `status=` to an UPDATE's values or to `Run(...)`."""
    found = []
    for tier in ("labcore", "backend", "worker"):
        for path in sources(tier):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "labcore/lifecycle.py" or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                targets = node.targets if isinstance(node, ast.Assign) else []
                targets = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
                if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                    found.append(f"{rel}:{node.lineno} assigns .status")
                if isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords):
                    name = (
                        node.func.attr
                        if isinstance(node.func, ast.Attribute)
                        else getattr(node.func, "id", "")
                    )
                    if name in ("values", "Run"):
                        found.append(f"{rel}:{node.lineno} sets status in {name}(...)")
    assert not found, found


def test_the_core_has_no_web_database_or_queue_imports():
    """The PyTorch core reads the run config's schema (labcore.run_config: each method's knobs, declared
    once) and nothing else of the lab: no web, database or queue code, no settings."""
    for path in sources("worker/gat"):
        for module, _ in imports(path):
            assert module.split(".")[0] not in WEB, f"{path.relative_to(ROOT)} imports {module}"
            if module.split(".")[0] == "labcore":
                assert module == "labcore.run_config", f"{path.relative_to(ROOT)} imports {module}"


@pytest.mark.parametrize(
    "modules", ["labcore.cli, labcore.crud, labcore.study, labcore.methods", "backend.main"]
)
def test_importing_the_shared_core_or_the_api_loads_neither_torch_nor_the_worker(modules):
    code = f"import sys, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'worker'}}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_no_function_is_longer_than_a_screen():
    """About 50 lines at most; migrations and the benchmarks' `main` (a report, top to bottom) aside."""
    long = []
    for folder in ("labcore", "backend", "worker", "bench"):
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


# ---- the dashboard's JavaScript ---------------------------------------------------------------------
# A small scanner, not a parser: it pairs the braces of code (strings, template literals with their
# ${...}, comments and regular expressions skipped) to find where each function ends.
REGEX_AFTER = set("(,=:[!&|?{};") | {"\n", ""}
REGEX_AFTER_WORDS = ("return", "typeof", "case", "in", "of", "else", "yield", "await")


def _skip_string(text: str, i: int) -> int:
    quote, i = text[i], i + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _skip_regex(text: str, i: int) -> int:
    i, in_class = i + 1, False
    while i < len(text) and (in_class or text[i] != "/"):
        if text[i] == "\\":
            i += 1
        elif text[i] in "[]":
            in_class = text[i] == "["
        i += 1
    return i + 1


def _regex_may_start(text: str, i: int) -> bool:
    before = text[:i].rstrip()
    return (before[-1:] in REGEX_AFTER) or before.endswith(REGEX_AFTER_WORDS)


def _js_blocks(text: str) -> dict[int, int]:
    """{offset of a code '{': offset of its '}'}."""
    pairs, opened, contexts, i = {}, [], ["code"], 0
    while i < len(text):
        c = text[i]
        if contexts[-1] == "template":
            if c == "`":
                contexts.pop()
            elif text.startswith("${", i):
                contexts.append("code")
                opened.append(None)  # closed by the '}' that ends the substitution
                i += 1
            i += 2 if c == "\\" else 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif c in "\"'":
            i = _skip_string(text, i)
        elif c == "/" and _regex_may_start(text, i):
            i = _skip_regex(text, i)
        else:
            if c == "`":
                contexts.append("template")
            elif c == "{":
                opened.append(i)
            elif c == "}":
                start = opened.pop()
                if start is None:
                    contexts.pop()
                else:
                    pairs[start] = i
            i += 1
    return pairs


JS_HEAD = re.compile(
    r"(?:function\s*\*?\s*([\w$]*)\s*\([^)]*\)\s*\{"
    r"|(?:const|let)\s+([\w$]+)\s*=\s*(?:async\s*)?(?:\([^)]*\)|[\w$]+)\s*=>\s*\{)"
)


def js_functions(text: str) -> list[tuple[str, int, int]]:
    """(name, first line, number of lines) of each named function or arrow function of a file."""
    pairs, out = _js_blocks(text), []
    for m in JS_HEAD.finditer(text):
        if m.end() - 1 in pairs:
            first = text.count("\n", 0, m.start()) + 1
            last = text.count("\n", 0, pairs[m.end() - 1]) + 1
            out.append((m.group(1) or m.group(2), first, last - first + 1))
    return out


def test_no_dashboard_function_is_longer_than_a_screen():
    """About 60 lines at most per function of frontend/ (the vendored uPlot aside)."""
    found = [
        (p.relative_to(ROOT).as_posix(), name, n)
        for p in sorted((ROOT / "frontend").rglob("*.js"))
        if "vendor" not in p.parts
        for name, _, n in js_functions(p.read_text())
    ]
    assert any(name == "launchPage" for _, name, _ in found), "the scanner found no functions"
    long = [f for f in found if f[2] > 60]
    assert not long, long


def test_the_js_scanner_finds_where_a_function_ends():
    text = "function a(x) {\n  const s = `${x ? `{` : '}'}`; // }\n  return /[{]/.test(s);\n}\nconst b = () => {\n}\n"
    assert js_functions(text) == [("a", 1, 4), ("b", 5, 2)]
    assert js_functions("const c = (y) => {\n  return y / 2 / {a: 1}.a;\n};\n") == [("c", 1, 3)]
