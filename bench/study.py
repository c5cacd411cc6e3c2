"""Run a study of studies/ and commit its report: the one code path from a design to the tables in
docs/results/ (the lab's report page prints the same tables from the same code).

    python -m bench.study studies/distill-digits.yaml                 # -> docs/results/distill-digits.md / .tex
    python -m bench.study studies/distill-digits.yaml --server URL    # its runs on a lab (GATLAB_TOKEN)

Runs `gatlab study run FILE --local` (every run of the design, one after another; a finished run is
not trained again, so a stopped benchmark resumes), or `gatlab study run FILE --server URL` (the
lab's workers train it; a study already there is extended, not duplicated), then writes the report's
Markdown and LaTeX exports, byte for byte as `GET /api/studies/{id}/report?format=md|latex` gives them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def runs_dir(design_file: str, out_dir: str | None = None) -> Path:
    """Where a study's run directories go: `out_dir`, else runs/study-NAME (as `gatlab study run`)."""
    return Path(out_dir or f"runs/study-{yaml.safe_load(Path(design_file).read_text())['name']}").resolve()


def export(
    design_file: str, fmt: str, out: Path, *, out_dir: str | None = None, server: str | None = None
) -> None:
    """Train what the study still lacks (here, or on the lab at `server`) and write its report as `fmt`."""
    where = (
        ["--server", server, "--poll", "5"]
        if server
        else ["--local", "--out-dir", str(runs_dir(design_file, out_dir))]
    )
    cmd = [sys.executable, "-m", "labcore.cli", "study", "run", str(Path(design_file).resolve()), *where]
    subprocess.run([*cmd, "--format", fmt, "--out", str(out)], check=True, cwd=ROOT)


def report(design_file: str, *, out_dir: str | None = None, server: str | None = None) -> dict:
    """The study's report as data (its JSON export), training what is missing first."""
    with tempfile.TemporaryDirectory() as tmp:
        export(design_file, "json", Path(tmp) / "report.json", out_dir=out_dir, server=server)
        return json.loads((Path(tmp) / "report.json").read_text())


def run(
    design_file: str, *, out_dir: str | None = None, docs: str = "docs/results", server: str | None = None
) -> Path:
    """Train what is missing, write docs/results/NAME.md and NAME.tex; returns the Markdown file."""
    name = yaml.safe_load(Path(design_file).read_text())["name"]
    md = (Path(docs) / f"{name}.md").resolve()
    md.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for fmt, path in (("md", md), ("latex", md.with_suffix(".tex"))):
        export(design_file, fmt, path, out_dir=out_dir, server=server)
    print(
        f"{design_file}: wrote {md} and {md.with_suffix('.tex')} in {time.time() - t0:.0f} s", file=sys.stderr
    )
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("design", help="a study's YAML file, e.g. studies/defense-digits.yaml")
    ap.add_argument("--out-dir", help="where the local run directories go (default runs/study-NAME)")
    ap.add_argument("--server", help="a lab's address: its workers train the runs (token: GATLAB_TOKEN)")
    ap.add_argument("--docs", default="docs/results", help="where the exports go")
    args = ap.parse_args()
    run(args.design, out_dir=args.out_dir, docs=args.docs, server=args.server)


if __name__ == "__main__":
    main()
