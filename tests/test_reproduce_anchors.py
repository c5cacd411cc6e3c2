"""bench/reproduce.py's anchors: each labelled with the model it was measured on, and each run
trained as its paper trained it, so a reproduction compares like with like."""

import argparse

import pytest

from bench import reproduce


def _args(dataset: str, arch: str = "auto") -> argparse.Namespace:
    return argparse.Namespace(
        dataset=dataset, path=None, data_dir="data", arch=arch, epochs=1, lr=0.1, optimizer="sgd",
        augment=False, panel="quick", n=10,
    )  # fmt: skip


@pytest.mark.parametrize(
    "dataset,method,arch,steps,step,extra",
    [
        ("mnist", "pgd_at", "madry_cnn", 40, 0.01, {}),  # Madry et al.: 40 steps of 0.01 at 0.3
        ("cifar10", "pgd_at", "wrn34_10", 7, 2 / 255, {}),  # Madry et al.: 7 steps of 2/255 at 8/255
        ("cifar10", "trades", "wrn34_10", 10, 0.007, {"beta": 6.0}),  # Zhang et al.
    ],
)
def test_each_anchor_is_trained_as_its_paper_trained_it(dataset, method, arch, steps, step, extra):
    cfg = reproduce.config(_args(dataset), method, 0)
    eps = {"mnist": 0.3, "cifar10": 8 / 255}[dataset]
    p = cfg["params"]
    assert cfg["model"]["arch"] == arch
    assert p["steps"] == steps and p["step_mult"] * eps / steps == pytest.approx(step)
    assert all(p[k] == v for k, v in extra.items())
    assert "not the published setting" not in reproduce.verdict(_args(dataset), method, [0.5])
    assert "not the published setting" in reproduce.verdict(
        _args(dataset, arch="preact_resnet18"), method, [0.5]
    )


def test_each_anchor_names_the_model_it_was_measured_on():
    labels = {k: v[2] for k, v in reproduce.ANCHORS.items()}
    assert "WRN-34-10" in labels[("cifar10", "pgd_at")] and "Madry" in labels[("cifar10", "pgd_at")]
    assert "WRN-34-10" in labels[("cifar10", "trades")]
    assert "their CNN" in labels[("mnist", "pgd_at")]
    assert not any("PreAct" in text for text in labels.values())
