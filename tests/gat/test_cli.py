"""The `gatlab` command as a user runs it: a real subprocess."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow  # the installed command in subprocesses, training and evaluating

ROOT = Path(__file__).resolve().parents[2]


def gatlab(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "labcore.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


TINY = {
    "name": "tiny",
    "scenario": "defense",
    "method": "great",
    "dataset": {"name": "synthetic", "size": 200},
    "model": {"arch": "cnn", "width": 4},
    "train": {"epochs": 2, "batch_size": 32},
    "eval": {"panel": "quick", "n": 30},
}


def write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_train_eval_export_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = gatlab("train", write(tmp_path, TINY), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "sanity checks" in r.stdout
    for f in (
        "config.json",
        "metrics.jsonl",
        "histograms.jsonl",
        "checkpoint.pt",
        "model.pt",
        "eval.json",
        "gallery.json",
    ):
        assert (out / f).exists(), f
    ev = json.loads((out / "eval.json").read_text())
    assert ev["n"] == 30 and {c["name"] for c in ev["checks"]} >= {
        "large_eps_to_zero",
        "white_box_beats_black_box",
    }

    r = gatlab("eval", str(out), "--n", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "eval.json").read_text())["n"] == 20

    r = gatlab("export", str(out), "-o", str(tmp_path / "m.pt"))
    assert r.returncode == 0, r.stderr
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    from worker.gat.train import load_model

    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(scripted(x), load_model(out)(x), atol=1e-5)


BAD_CONFIGS = {
    "unknown method": ({**TINY, "method": "magic"}, "method: unknown scenario:method; allowed: defense:erm"),
    "bad fraction": ({**TINY, "dataset": {"name": "digits", "fraction": 1.5}}, "dataset.fraction"),
    "unknown knob": ({**TINY, "params": {"lamda": 1}}, "params.lamda: Extra inputs are not permitted"),
    "bad schedule": (
        {**TINY, "params": {"lam_schedule": "cubic"}},
        "params.lam_schedule: Input should be 'constant', 'warmup' or 'dann'",
    ),
    "unknown dataset": ({**TINY, "dataset": {"name": "imagenet"}}, "dataset.name: Input should be 'digits'"),
    "negative epochs": ({**TINY, "train": {"epochs": -1}}, "train.epochs"),
    "task not in dataset": (
        {
            **TINY,
            "scenario": "multitask",
            "method": "single_task",
            "dataset": {"name": "digits_mt"},
            "params": {"task": "colour"},
        },
        "params: Value error, task(s) ['colour'] not in digits_mt",
    ),
    "one-task dataset": (
        {**TINY, "scenario": "multitask", "method": "equal", "dataset": {"name": "digits"}},
        "dataset: Value error, digits has one task",
    ),
    "distill knob on defense": ({**TINY, "params": {"teacher_dir": "x"}}, "params.teacher_dir: Extra inputs"),
    "a model file to train": (
        {**TINY, "eval": {"model_path": "m.pt"}},
        "eval.model_path: training makes its own",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_names_the_field(tmp_path, case):
    cfg, msg = BAD_CONFIGS[case]
    r = gatlab("train", write(tmp_path, cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_files_give_cli_messages(tmp_path):
    r = gatlab("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    r = gatlab("train", str(tmp_path / "broken.yaml"))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    cfg = {**TINY, "dataset": {"name": "npz", "path": str(tmp_path / "none.npz")}}
    r = gatlab("train", write(tmp_path, cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "dataset.path: no such file" in r.stderr and "Traceback" not in r.stderr
    r = gatlab("eval", str(tmp_path))
    assert r.returncode == 2 and "not a run directory" in r.stderr
    cfg = {
        **TINY,
        "scenario": "distill",
        "method": "soft_targets",
        "params": {"teacher_dir": str(tmp_path / "nope")},
    }
    r = gatlab("train", write(tmp_path, cfg), "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "params.teacher_dir:" in r.stderr and "Traceback" not in r.stderr
    cfg = {**TINY, "scenario": "distill", "method": "student", "params": {"teacher_run": 3}}
    r = gatlab("train", write(tmp_path, cfg), "--out", str(tmp_path / "r3"))
    assert r.returncode == 2 and "params.teacher_run: run ids are resolved by the lab service" in r.stderr


def test_methods_lists_every_method_with_knob_defaults():
    r = gatlab("methods")
    assert r.returncode == 0
    for m in (
        "defense:erm",
        "defense:great",
        "defense:greace",
        "defense:great+greace",
        "defense:fgsm_at",
        "defense:pgd_at",
        "defense:trades",
        "defense:igr",
    ):
        assert m in r.stdout
    table = json.loads(gatlab("methods", "--json").stdout)
    great = next(m for m in table if m["method"] == "great")
    assert {"name": "lam_schedule", "default": "constant"}.items() <= next(
        k for k in great["knobs"] if k["name"] == "lam_schedule"
    ).items()


@pytest.mark.parametrize(
    "name,scenario",
    [("defense-digits", "defense"), ("distill-digits", "distill"), ("multitask-digits", "multitask")],
)
def test_shipped_examples_are_valid(name, scenario):
    from worker.cli import load_config

    assert load_config(f"examples/{name}.yaml")["scenario"] == scenario


def test_multitask_train_and_export_end_to_end(tmp_path):
    cfg = {
        **TINY,
        "scenario": "multitask",
        "method": "great",
        "dataset": {"name": "digits_mt"},
        "eval": {"panel": "none"},
    }
    out = tmp_path / "mt"
    r = gatlab("train", write(tmp_path, cfg), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "digit/acc" in r.stdout and "intensity/mse" in r.stdout
    r = gatlab("export", str(out), "-o", str(tmp_path / "mt.pt"))
    assert r.returncode == 0 and "a dict of task outputs" in r.stdout, r.stderr
    outs = torch.jit.load(str(tmp_path / "mt.pt"))(torch.rand(2, 1, 8, 8))
    assert set(outs) == {"digit", "parity", "gt4", "intensity"}
    # The game scored after training: a fresh task-id probe on the final model's gradients.
    from worker.gat import data as gdata
    from worker.gat.probe import task_probe
    from worker.gat.train import load_model

    game = json.loads((out / "summary.json").read_text())["game"]
    want = task_probe(load_model(out), gdata.load(cfg["dataset"]), device=torch.device("cpu"), seed=0)
    assert game["played"] and game["accuracy"] == want["accuracy"] and game["chance"] == 0.25


def test_train_a_shipped_example_as_installed_with_its_progress_bar(tmp_path):
    """What a new user runs first: the installed `gatlab` script on a shipped example, in a terminal
    (a pseudo-terminal here), so the progress bar is drawn as a user sees it."""
    gatlab_script = Path(sys.executable).with_name("gatlab")
    out = tmp_path / "run"
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    p = subprocess.Popen(
        [str(gatlab_script), "train", "examples/defense-digits.yaml", "--out", str(out)],
        cwd=ROOT,
        stdin=child,
        stdout=child,
        stderr=child,
        close_fds=True,
    )
    os.close(child)
    screen = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(parent)
    assert p.wait(timeout=600) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode(errors="replace")
    total = json.loads((out / "summary.json").read_text())["steps"]
    assert total >= 30  # 30 epochs
    assert re.search(rf"100%\|[^|]*\| {total}/{total} \[", text), text[-3000:]  # tqdm's finished bar
    assert "sanity checks:" in text and "Traceback" not in text
    assert (out / "model.pt").exists() and (out / "eval.json").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_eval_any_torchscript_model_and_refuse_a_pickle(tmp_path):
    run = tmp_path / "run"
    assert gatlab("train", write(tmp_path, TINY), "--out", str(run), "-q").returncode == 0
    assert gatlab("export", str(run), "-o", str(tmp_path / "m.pt")).returncode == 0
    r = gatlab("eval", "--model", str(tmp_path / "m.pt"), "--dataset", "synthetic", "--n", "20")
    assert r.returncode == 0, r.stderr
    assert "gradient probe:" in r.stdout and "[PASS] deterministic_model" in r.stdout
    ev = json.loads((tmp_path / "m-eval" / "eval.json").read_text())
    assert ev["n"] == 20 and len(ev["checks"]) == 10 and ev["probe"]["n_test"] > 0

    marker = tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker)}, tmp_path / "evil.pt")
    r = gatlab("eval", "--model", str(tmp_path / "evil.pt"), "--dataset", "synthetic")
    assert (
        r.returncode == 2
        and "not a TorchScript model" in r.stderr
        and "Pickled models are refused" in r.stderr
    )
    assert not marker.exists()

    import numpy as np

    np.savez(tmp_path / "rgb.npz", x=np.random.rand(40, 3, 8, 8).astype("float32"), y=np.arange(40) % 4)
    r = gatlab(
        "eval", "--model", str(tmp_path / "m.pt"), "--dataset", "npz", "--path", str(tmp_path / "rgb.npz")
    )
    assert r.returncode == 2 and "fails on images of shape (3, 8, 8)" in r.stderr, r.stderr
    assert gatlab("eval", str(run), "--model", str(tmp_path / "m.pt")).returncode == 2  # one or the other


def test_export_safetensors_and_evaluate_it_like_the_torchscript_file(tmp_path):
    """Weights without code: the same model, the same panel, whichever file format carries it."""
    run = tmp_path / "run"
    assert gatlab("train", write(tmp_path, TINY), "--out", str(run), "-q").returncode == 0
    r = gatlab("export", str(run), "-o", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0 and "safetensors weights of cnn" in r.stdout, r.stderr
    assert gatlab("export", str(run), "-o", str(tmp_path / "m.pt")).returncode == 0
    evals = {}
    for name in ("m.safetensors", "m.pt"):
        out = tmp_path / f"{name}-eval"
        r = gatlab(
            "eval", "--model", str(tmp_path / name), "--dataset", "synthetic", "--n", "20", "--out", str(out)
        )
        assert r.returncode == 0, r.stderr
        evals[name] = json.loads((out / "eval.json").read_text())
    st, ts = evals["m.safetensors"], evals["m.pt"]
    assert st["clean_accuracy"] == ts["clean_accuracy"] and st["n"] == 20
    assert [x["accuracy"] for x in st["rows"] if x["attack"] in ("fgsm", "pgd")] == [
        x["accuracy"] for x in ts["rows"] if x["attack"] in ("fgsm", "pgd")
    ]
    # a bare safetensors file (no metadata): the architecture comes from --arch/--width
    from safetensors.torch import load_file, save_file

    save_file(load_file(tmp_path / "m.safetensors"), tmp_path / "bare.safetensors")
    args = ("eval", "--model", str(tmp_path / "bare.safetensors"), "--dataset", "synthetic", "--n", "20")
    r = gatlab(*args)
    assert r.returncode == 2 and "do not fit auto (width 16)" in r.stderr, r.stderr
    r = gatlab(*args, "--arch", "cnn", "--width", "4", "--out", str(tmp_path / "bare-eval"))
    assert r.returncode == 0, r.stderr
    bare = json.loads((tmp_path / "bare-eval" / "eval.json").read_text())
    assert [x["accuracy"] for x in bare["rows"]] == [x["accuracy"] for x in st["rows"]]


def _benchmarks_commit_the_reports_exports(f, design, tmp_path, md):
    """bench/study.py writes the report's own Markdown and LaTeX exports (the finished runs are not
    trained again); bench/defense.py adds each run's intervals from the same run directories."""
    from bench import defense, study
    from labcore.study import StudyDesign

    out = study.run(f, out_dir=str(tmp_path / "runs"), docs=str(tmp_path / "docs"))
    assert out.read_text() == md
    tex = gatlab(
        "study", "run", f, "--local", "--out-dir", str(tmp_path / "runs"), "--format", "latex"
    ).stdout
    assert out.with_suffix(".tex").read_text() == tex and tex.startswith("\\begin{table}")
    lines = defense.per_seed(StudyDesign.model_validate(design), tmp_path / "runs")
    ev = json.loads((tmp_path / "runs" / "great-seed1" / "eval.json").read_text())
    aa = next(r for r in ev["rows"] if r["attack"] == "autoattack")
    want = f"| great | 1 | {100 * aa['accuracy']:.1f} [{100 * aa['ci'][0]:.1f}, {100 * aa['ci'][1]:.1f}] (n=20) |"
    assert sum(line.startswith("| great | 1 |") for line in lines) == 1 and any(
        want in line for line in lines
    )


def test_a_study_runs_locally_reports_its_runs_and_never_trains_a_finished_run_twice(tmp_path):
    import statistics

    design = {
        "name": "local",
        "scenario": "defense",
        "dataset": {"name": "synthetic", "size": 200},
        "model": {"arch": "cnn", "width": 4},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"panel": "quick", "n": 20},
        "methods": [{"method": "erm"}, {"method": "great", "params": {"lam": 0.1}}],
        "seeds": [0, 1],
        "baseline": "erm",
    }
    f = write(tmp_path, design, "study.yaml")
    args = ("study", "run", f, "--local", "--out-dir", str(tmp_path / "runs"), "--format", "json")
    r = gatlab(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("training into") == 4
    rep = json.loads(r.stdout)
    for row in rep["rows"]:
        aa = []
        for seed in (0, 1):
            ev = json.loads((tmp_path / "runs" / f"{row['label']}-seed{seed}" / "eval.json").read_text())
            aa += [
                x["accuracy"] for x in ev["rows"] if x["attack"] == "autoattack" and x["eps"] == ev["std_eps"]
            ]
        assert row["cells"]["autoattack"]["mean"] == pytest.approx(statistics.fmean(aa)) and len(aa) == 2
    again = gatlab(*args)
    assert again.returncode == 0 and "training into" not in again.stderr and again.stdout == r.stdout
    md = gatlab(*args[:-2], "--format", "md").stdout
    assert "| great | 2 |" in md and "| erm | 2 |" in md
    _benchmarks_commit_the_reports_exports(f, design, tmp_path, md)
    nowhere = gatlab("study", "run", f, "--local", "--out", str(tmp_path / "no" / "such" / "r.md"))
    assert nowhere.returncode == 2 and "--out: no such directory" in nowhere.stderr
    assert "training into" not in nowhere.stderr
    bad = write(tmp_path, {**design, "baseline": "trades"}, "bad.yaml")
    r = gatlab("study", "run", bad, "--local")
    assert r.returncode == 2 and "baseline" in r.stderr
