"""Run a study of studies/ on this machine and commit its report: the one code path from a design to
the tables in docs/results/ (the lab's report page prints the same tables from the same code).

    python -m bench.study studies/distill-digits.yaml      # -> docs/results/distill-digits.md / .tex

Runs `gatlab study run FILE --local` (every run of the design, one after another; a finished run is
not trained again, so a stopped benchmark resumes), then writes the report's Markdown and LaTeX
exports, byte for byte as `GET /api/studies/{id}/report?format=md|latex` gives them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def runs_dir(design_file: str, out_dir: str | None = None) -> Path:
    """Where a study's run directories go: `out_dir`, else runs/study-NAME (as `gatlab study run`)."""
    return Path(out_dir or f"runs/study-{yaml.safe_load(Path(design_file).read_text())['name']}").resolve()


def run(design_file: str, *, out_dir: str | None = None, docs: str = "docs/results") -> Path:
    """Train what is missing, write docs/results/NAME.md and NAME.tex; returns the Markdown file."""
    name = yaml.safe_load(Path(design_file).read_text())["name"]
    runs = str(runs_dir(design_file, out_dir))  # absolute: the command runs in the repository
    md = (Path(docs) / f"{name}.md").resolve()
    md.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for fmt, path in (("md", md), ("latex", md.with_suffix(".tex"))):
        cmd = [
            sys.executable,
            "-m",
            "backend.cli",
            "study",
            "run",
            str(Path(design_file).resolve()),
            "--local",
        ]
        subprocess.run([*cmd, "--out-dir", runs, "--format", fmt, "--out", str(path)], check=True, cwd=ROOT)
    print(
        f"{design_file}: wrote {md} and {md.with_suffix('.tex')} in {time.time() - t0:.0f} s", file=sys.stderr
    )
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("design", help="a study's YAML file, e.g. studies/defense-digits.yaml")
    ap.add_argument("--out-dir", help="where the run directories go (default runs/study-NAME)")
    ap.add_argument("--docs", default="docs/results", help="where the exports go")
    args = ap.parse_args()
    run(args.design, out_dir=args.out_dir, docs=args.docs)


if __name__ == "__main__":
    main()
