import json
from pathlib import Path

import pytest
import torch

from labcore.run_config import parse_run_config
from worker.gat.recorder import JsonlRecorder
from worker.gat.train import Stopped, checkpoint_step, train


def read_jsonl(path: Path) -> list[dict]:
    """The records a JsonlRecorder wrote, one JSON object a line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _config(method: str, epochs: int = 3) -> dict:
    return parse_run_config(
        {
            "name": "t",
            "scenario": "defense",
            "method": method,
            "dataset": {"name": "synthetic", "size": 300},
            "model": {"arch": "cnn", "width": 4},
            "train": {"epochs": epochs, "batch_size": 32, "stats_every": 3},
            "eval": {"panel": "none"},
        }
    ).model_dump()


class StopAfter:
    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self):
        self.seen += 1
        return self.seen > self.n


@pytest.mark.parametrize("method", ["great+greace", "fgsm_at"])
def test_resume_reproduces_an_uninterrupted_run_exactly(method, tmp_path):
    cfg = _config(method)
    full = tmp_path / "full"
    rec = JsonlRecorder(full, progress_bar=False)
    train(cfg, full, rec)
    rec.close()

    cut = tmp_path / "cut"
    rec = JsonlRecorder(cut, progress_bar=False)
    with pytest.raises(Stopped):
        train(cfg, cut, rec, should_stop=StopAfter(12))  # 7 steps an epoch: stops inside epoch 2
    rec.close()
    step = checkpoint_step(cut)
    assert step == 7  # 216 training examples, batches of 32: the end of epoch 1
    rec = JsonlRecorder(cut, resume_step=step, progress_bar=False)
    train(cfg, cut, rec)
    rec.close()

    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(cut / "metrics.jsonl")
    assert a == b  # same rows, same values, no duplicate and no missing step
    ma = torch.load(full / "model.pt", weights_only=False)["model"]
    mb = torch.load(cut / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_training_records_progress_statistics_and_histograms(tmp_path):
    cfg = _config("great", epochs=2)
    cfg["train"]["log_every"] = 4  # 14 steps: logged at 4, 8, 12 and the last, 14
    seen = []

    class Rec(JsonlRecorder):
        def progress(self, step, total, eta_s):
            seen.append((step, total, eta_s))

    rec = Rec(tmp_path, progress_bar=False)
    summary = train(cfg, tmp_path, rec)
    rec.close()
    assert seen[-1][:2] == (14, 14) and seen[-1][2] == 0.0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    keys = set().union(*rows)
    for k in (
        "train/loss",
        "train/aux_acc",
        "train/aux_chance",
        "cos/within",
        "cos/between",
        "grad_norm/class_0",
        "val/acc",
        "test/acc",
    ):
        assert k in keys, k
    assert any(k.startswith("layer_grad/") for k in keys)

    def steps(key):
        return [r["step"] for r in rows if key in r]

    assert steps("train/loss") == steps("train/aux_acc") == [4, 8, 12, 14]  # the last step is never dropped
    assert (
        steps("cos/within") == [1, 3, 6, 9, 12] and steps("val/acc") == [7, 14] and steps("test/acc") == [14]
    )
    hists = read_jsonl(tmp_path / "histograms.jsonl")
    assert hists and all(len(h["counts"]) == len(h["edges"]) - 1 for h in hists)
    assert summary["data"]["train_hash"]


def test_a_checkpoint_never_runs_ahead_of_the_flushed_points(tmp_path, monkeypatch):
    """A worker killed right after a checkpoint must not lose the points before it."""
    from worker.gat import train as train_mod
    from worker.gat.recorder import Recorder

    class Spy(Recorder):
        logged = flushed = 0

        def log(self, step, metrics):
            self.logged = max(self.logged, step)

        def flush(self):
            self.flushed = self.logged

    spy, seen = Spy(), []
    real = train_mod._save_checkpoint

    def checked(out_dir, s, method, opt, aux_opt, sched, epoch, step, **where):
        seen.append(step)
        assert spy.flushed >= step, f"checkpoint at step {step} with points flushed only to {spy.flushed}"
        real(out_dir, s, method, opt, aux_opt, sched, epoch, step, **where)

    monkeypatch.setattr(train_mod, "_save_checkpoint", checked)
    train(_config("erm", epochs=2), tmp_path, spy)
    assert seen == [7, 14]


@pytest.mark.parametrize(
    "scenario,method", [("defense", "great"), ("distill", "great"), ("multitask", "equal")]
)
@pytest.mark.slow
def test_every_phase_after_the_last_checkpoint_resumes(tmp_path, scenario, method):
    """A crash after the last epoch's checkpoint (during the test evaluation, the teacher agreement
    or the panel): training again into the directory finishes the job from that checkpoint."""
    from worker.gat import job
    from worker.gat.recorder import JsonlRecorder

    dataset = {"name": "digits_mt" if scenario == "multitask" else "synthetic", "size": 300}
    cfg = parse_run_config(
        {
            "name": "t",
            "scenario": scenario,
            "method": method,
            "dataset": dataset,
            "model": {"arch": "cnn", "width": 4},
            "train": {"epochs": 2, "batch_size": 64},
            "params": {"teacher_width": 4, "teacher_epochs": 1} if scenario == "distill" else {},
            "eval": {"panel": "quick" if scenario == "defense" else "none", "n": 10},
        }
    ).model_dump(mode="json")
    whole, whole_panel = job.run(
        cfg, tmp_path / "whole", JsonlRecorder(tmp_path / "whole", progress_bar=False)
    )
    out = tmp_path / "crashed"
    job.run(cfg, out, JsonlRecorder(out, progress_bar=False))
    for f in (
        "model.pt",
        "summary.json",
        "eval.json",
        "gallery.json",
    ):  # as if killed right after the checkpoint
        (out / f).unlink(missing_ok=True)
    resumed, resumed_panel = job.run(
        cfg, out, JsonlRecorder(out, resume_step=checkpoint_step(out), progress_bar=False)
    )
    assert resumed["steps"] == whole["steps"] and resumed["test"] == whole["test"]
    assert (out / "model.pt").exists()
    if scenario == "defense":
        assert (out / "eval.json").exists() and resumed_panel["rows"] == whole_panel["rows"]
    if scenario == "distill":
        assert resumed["test"]["agreement"] == whole["test"]["agreement"]
        teacher = json.loads((tmp_path / "whole" / "teacher" / "summary.json").read_text())
        assert whole["test"]["teacher_acc"] == teacher["test"]["acc"]  # the teacher's own test accuracy


def test_a_run_handed_back_mid_epoch_resumes_exactly(tmp_path):
    """A worker told to shut down checkpoints at the next step (mid-epoch, augmentation on) and
    raises HandedBack; training again from there ends bit-identical to an uninterrupted run."""
    from worker.gat.train import HandedBack, load_model

    cfg = _config("great", epochs=3)
    cfg["train"]["augment"] = True
    train(cfg, tmp_path / "whole", JsonlRecorder(tmp_path / "whole", progress_bar=False))
    out = tmp_path / "handed"
    calls = {"n": 0}

    def after_13_steps():
        calls["n"] += 1
        return calls["n"] > 13

    with pytest.raises(HandedBack, match="checkpointed at step 13 .* and handed back"):
        train(cfg, out, JsonlRecorder(out, progress_bar=False), should_hand_back=after_13_steps)
    assert checkpoint_step(out) == 13  # mid-epoch: an epoch here is 7 steps
    train(cfg, out, JsonlRecorder(out, resume_step=13, progress_bar=False))
    a, b = load_model(tmp_path / "whole").state_dict(), load_model(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, steps[-1] + 1))


@pytest.mark.parametrize("method,played", [("great", True), ("erm", False)])
def test_every_defense_run_scores_its_game_with_a_fresh_probe_even_without_a_panel(method, played, tmp_path):
    """The class read from eval-mode input gradients by a fresh classifier, against chance: GREAT's
    game after training, and the baseline's reference, stored in the summary and as test metrics."""
    import json

    from worker.gat import data as gdata
    from worker.gat.probe import gradient_probe
    from worker.gat.train import load_model

    rec = JsonlRecorder(tmp_path, progress_bar=False)
    summary = train(_config(method), tmp_path, rec)
    rec.close()
    game = summary["game"]
    assert game["of"] == "the class from input gradients" and game["played"] is played
    want = gradient_probe(
        load_model(tmp_path), gdata.load({"name": "synthetic", "size": 300}), device=torch.device("cpu")
    )
    assert (game["accuracy"], game["chance"], game["n_test"]) == (
        want["accuracy"],
        want["chance"],
        want["n_test"],
    )
    assert game["ci"][0] <= game["accuracy"] <= game["ci"][1] + 1e-9 and 0 < game["chance"] < 1
    assert json.loads((tmp_path / "summary.json").read_text())["game"] == game
    logged = {
        k: v
        for r in read_jsonl(tmp_path / "metrics.jsonl")
        for k, v in r.items()
        if k.startswith("test/probe")
    }
    assert logged == {"test/probe": game["accuracy"], "test/probe_chance": game["chance"]}


def test_robust_validation_accuracy_is_logged_every_epoch_kept_in_the_summary_and_changes_nothing_else(
    tmp_path,
):
    """val/pgd (what the tuning search scores) is PGD at the standard radius on the validation split,
    and asking for it leaves training as it was: the same weights as a run without it."""
    from worker.gat import data as gdata
    from worker.gat.attacks import pgd
    from worker.gat.train import load_model

    runs = {}
    for steps in (0, 5):
        cfg = _config("great", epochs=2)
        cfg["train"].update(val_pgd_steps=steps, lr=0.01)
        out = tmp_path / str(steps)
        rec = JsonlRecorder(out, progress_bar=False)
        train(cfg, out, rec)
        rec.close()
        runs[steps] = (out, [r for r in read_jsonl(out / "metrics.jsonl") if "val/acc" in r])
    plain, robust = runs[0][1], runs[5][1]
    assert all("val/pgd" not in r for r in plain) and [r["epoch"] for r in robust] == [1, 2]
    assert all(0 <= r["val/pgd"] <= r["val/acc"] for r in robust)
    a, b = load_model(runs[0][0]).state_dict(), load_model(runs[5][0]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the attack drew no training randomness
    model, val = load_model(runs[5][0]), gdata.load({"name": "synthetic", "size": 300}).val
    torch.manual_seed(0)
    x, y = val.images(), val.y
    want = (
        (model(pgd(model, x, y, eps=gdata.STANDARD_EPS["synthetic"][0], steps=5)).argmax(1) == y)
        .float()
        .mean()
    )
    assert (
        robust[-1]["val/pgd"] == pytest.approx(want.item())
        and robust[-1]["val/pgd"] < robust[-1]["val/acc"]  # it bites
    )
    for steps, (out, logged) in runs.items():  # the summary's val (a tuning study's report): the last epoch's
        final = json.loads((out / "summary.json").read_text())["val"]
        assert final == {k.removeprefix("val/"): v for k, v in logged[-1].items() if k.startswith("val/")}
        assert set(final) == ({"acc", "loss", "pgd"} if steps else {"acc", "loss"}), final


def test_a_checkpoint_the_disk_refuses_is_a_clear_error_and_leaves_no_partial_file(tmp_path):
    """Issue 27, finding 8: a full disk failed a run with torch's "unexpected pos 64 vs 0" and left
    checkpoint.tmp. Here the writer runs under a file size limit of 4 KiB (the same refusal)."""
    import subprocess
    import sys

    code = (
        "import resource, sys, torch; from pathlib import Path; from worker.gat.train import _save_atomic\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n    _save_atomic({'w': torch.ones(10_000)}, Path(sys.argv[1]) / 'checkpoint.pt')\n"
        "except OSError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("StorageError could not write checkpoint.pt"), out
    assert "MiB free" in out.stdout and "retry it once space is freed" in out.stdout
    assert list(tmp_path.iterdir()) == []
