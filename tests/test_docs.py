"""Every command the docs show runs as written: the README's `gatlab` lines parse with the real CLI
and their subcommands answer `--help` through the installed `gatlab` script; every benchmark command
(bench/ docstrings, docs/results/, the README) starts and answers `--help`; CI runs the README's
install and test commands verbatim."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from labcore import cli

ROOT = Path(__file__).resolve().parents[1]


def parser_for(argv: list[str]):
    """The parser of the tier that owns the command in `argv`, as `gatlab` dispatches it."""
    return cli.training_cli().build_parser() if cli.trains(argv) else cli.build_parser()


README = (ROOT / "README.md").read_text()
GATLAB = Path(sys.executable).with_name("gatlab")  # the console script the install made
# The README's placeholders, replaced by a value of their kind.
PLACEHOLDERS = {"NAME": "alice", "ID": "1", "URL": "http://127.0.0.1:8000", "H": "127.0.0.1", "P": "8000"}


def code_lines(text: str) -> list[str]:
    """Lines of the README's indented code blocks."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def readme_gatlab_commands() -> list[list[str]]:
    """Each `gatlab ...` line of the README, with `a | b` alternatives expanded (`gatlab users list |
    token NAME` is `gatlab users list` and `gatlab users token NAME`) and placeholders filled."""
    commands = []
    for line in code_lines(README):
        line = line.split(" #")[0].replace("[", "").replace("]", "")
        if not line.startswith("gatlab "):
            continue
        first, *alternatives = [shlex.split(seg) for seg in line.split(" | ")]
        for words in [first] + [first[:2] + alt for alt in alternatives]:
            commands.append([PLACEHOLDERS.get(w, w) for w in words])
    return commands


def test_the_readme_shows_the_cli():
    subcommands = {c[1] for c in readme_gatlab_commands()}
    assert subcommands >= {
        "train",
        "eval",
        "export",
        "methods",
        "up",
        "worker",
        "submit",
        "db",
        "setup",
        "users",
        "health",
    }


@pytest.mark.parametrize("words", readme_gatlab_commands(), ids=" ".join)
def test_each_readme_gatlab_command_parses(words):
    args = parser_for(words[1:]).parse_args(
        words[1:]
    )  # SystemExit (a failure) on an unknown command, flag or value
    assert args.cmd == words[1]
    for w in words:
        if w.startswith("examples/"):
            assert (ROOT / w).is_file(), f"{w} is not in the repository"


@pytest.mark.parametrize("cmd", sorted({c[1] for c in readme_gatlab_commands()}))
def test_each_gatlab_subcommand_answers_help_as_installed(cmd):
    r = subprocess.run([str(GATLAB), cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: gatlab {cmd}")


BENCH_COMMAND = re.compile(r"python (-m bench\.\w+|bench/\S+\.py)([^\n`#]*)")


def documented_bench_commands() -> list[str]:
    sources = [
        README,
        *(p.read_text() for p in sorted((ROOT / "bench").glob("*.py"))),
        *(
            p.read_text()
            for p in sorted((ROOT / "docs" / "results").iterdir())
            if p.suffix in (".md", ".txt")
        ),
    ]
    found = set()
    for text in sources:
        for target, rest in BENCH_COMMAND.findall(text):
            rest = re.sub(r"\[[^\]]*\]", "", rest)  # optional arguments, shown as [--flag value]
            found.add(f"python {target} {rest}".strip())
    return sorted(found)


def test_every_benchmark_is_documented_with_a_command():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")}
    shown = {
        m.group(1).removeprefix("-m bench.") for m in map(BENCH_COMMAND.match, documented_bench_commands())
    }
    assert scripts <= shown, f"benchmarks without a documented command: {scripts - shown}"


@pytest.mark.parametrize("command", documented_bench_commands())
def test_each_documented_benchmark_command_starts(command):
    """As written, plus --help: it must get past its imports and its argument parser."""
    words = shlex.split(command)
    r = subprocess.run(
        [sys.executable, *words[1:], "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert r.returncode == 0, f"{command} --help failed:\n{r.stderr[-2000:]}"
    assert r.stdout.startswith("usage:")


def test_no_benchmark_shadows_a_standard_module():
    """`python bench/queue.py` once hid the standard `queue` from torch for every script in bench/."""
    clash = {p.stem for p in (ROOT / "bench").glob("*.py")} & set(sys.stdlib_module_names)
    assert not clash, clash


def test_ci_runs_the_readme_install_and_test_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    install = next(line for line in code_lines(README) if line.startswith("pip install"))
    assert install.endswith(" && gatlab up")
    assert install.removesuffix(" && gatlab up") in ci.splitlines()
    assert "./scripts/test" in code_lines(README) and "./scripts/test" in ci.splitlines()
    assert re.search(r"^python3\.11 -m venv ", ci, re.M), "CI builds a brand-new virtual environment"
    assert "-c requirements-lock.txt" in (ROOT / "scripts" / "test").read_text()


def _shipped_text_files() -> list[Path]:
    """The code, the README and the examples a reader follows references from."""
    out = [ROOT / "README.md"]
    for folder in ("labcore", "backend", "worker", "bench", "frontend", "scripts", "docker"):
        out += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in (".py", ".js", ".sh", ".md", "")
        ]
    return [p for p in out if "vendor" not in p.parts]


def test_every_design_reference_resolves_to_a_section_of_docs_design():
    """The code and the README cite the design as "docs/design.md section N": N must be a heading of
    that file, and no reference names the old DESIGN file, which is in no commit."""
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), re.M))
    assert sections >= {str(n) for n in range(1, 11)}
    cited, stale = set(), []
    for path in _shipped_text_files():
        text = path.read_text(errors="ignore")
        cited |= {
            (path.relative_to(ROOT).as_posix(), n) for n in re.findall(r"docs/design\.md section (\d+)", text)
        }
        stale += [
            path.relative_to(ROOT).as_posix() for _ in re.findall(r"\bDESIGN(?: section| \d|\.md)", text)
        ]
    assert cited, "nothing cites docs/design.md"
    assert not [c for c in cited if c[1] not in sections], [c for c in cited if c[1] not in sections]
    assert not stale, f"references to the old DESIGN file: {stale}"


def test_the_fast_tier_runs_the_core_and_api_tests_less_the_slow_ones():
    """`./scripts/test --fast` (the README's inner loop) selects the core's and the API's tests and
    leaves out exactly those marked slow."""
    script = (ROOT / "scripts" / "test").read_text()
    assert "./scripts/test --fast" in (ROOT / "README.md").read_text()
    line = next(s for s in script.split("exec ") if s.startswith('python3 -m pytest -m "not slow"'))
    args = [a for a in shlex.split(line.replace("\\\n", " ").split("\n")[0])[3:] if a != "$@"]
    assert args[:2] == ["-m", "not slow"] and "tests/gat" in args and "tests/service/test_api.py" in args
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args[2:]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    every = {line for line in r.stdout.splitlines() if "::" in line}
    fast = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    chosen = {line for line in fast.splitlines() if "::" in line}
    assert chosen and chosen < every
    assert any(t.startswith("tests/gat/") for t in chosen) and any("test_api.py" in t for t in chosen)
    assert not any(
        "test_no_input_produces_a_server_error" in t or "tests/gat/test_cli.py" in t for t in chosen
    )
