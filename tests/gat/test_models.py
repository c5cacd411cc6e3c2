import pytest
import torch

from worker.gat import models


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet20", "resnet32", "resnet56", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_architecture_maps_unit_images_to_logits_and_backpropagates_to_the_input(arch, shape):
    torch.manual_seed(0)
    width = 2 if arch != "mlp" else 4
    m = models.build(
        {"arch": arch, "width": width},
        input_shape=shape,
        num_classes=7,
        mean=[0.5] * shape[0],
        std=[0.25] * shape[0],
    )
    x = torch.rand(2, *shape, requires_grad=True)
    out = m(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert isinstance(m[0], models.Normalize)  # normalisation inside: attacks work in pixel space


@pytest.mark.parametrize(
    "arch,shape,params",
    [  # the published models' sizes for 10 classes
        ("madry_cnn", (1, 28, 28), 3_274_634),  # Madry et al.'s MNIST challenge model
        ("preact_resnet18", (3, 32, 32), 11_172_170),  # Rice et al. (2020) / RobustBench PreAct ResNet-18
        ("wrn28_10", (3, 32, 32), 36_479_194),
        ("wrn34_10", (3, 32, 32), 46_160_474),  # TRADES' CIFAR-10 model
    ],
)
def test_the_literature_architectures_have_their_published_sizes(arch, shape, params):
    m = models.build(
        {"arch": arch}, input_shape=shape, num_classes=10, mean=[0.5] * shape[0], std=[0.5] * shape[0]
    )
    assert sum(p.numel() for p in m.parameters()) == params
    x = torch.rand(2, *shape, requires_grad=True)
    m(x).sum().backward()
    assert m(x).shape == (2, 10) and x.grad.abs().sum() > 0


def test_auto_picks_an_architecture_that_fits_the_input_size():
    assert models.auto_arch((1, 8, 8)) == "cnn"
    assert models.auto_arch((1, 28, 28)) == "madry_cnn"
    assert models.auto_arch((3, 32, 32)) == "preact_resnet18"


@pytest.mark.slow
def test_a_first_run_on_28x28_digits_learns_with_the_default_architecture(tmp_path):
    """Digits upscaled to 28x28, as a user's own MNIST-like .npz: the default model (auto: Madry et
    al.'s CNN) learns in two epochs; the small CNN, built for 8x8, does far worse on the same budget."""
    import numpy as np
    import torch.nn.functional as F

    from labcore.run_config import parse_run_config
    from worker.gat import data as gdata
    from worker.gat.recorder import NullRecorder
    from worker.gat.train import train

    d = gdata.load({"name": "digits"})
    x = torch.cat([d.train.images(), d.val.images(), d.test.images()])
    y = torch.cat([d.train.y, d.val.y, d.test.y])
    big = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    np.savez(tmp_path / "d28.npz", x=(big * 255).round().byte().numpy(), y=y.numpy())

    def accuracy(arch):
        cfg = {
            "name": arch,
            "scenario": "defense",
            "method": "erm",
            "dataset": {"name": "npz", "path": str(tmp_path / "d28.npz")},
            "model": {"arch": arch},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"panel": "none"},
        }
        cfg = parse_run_config(cfg).model_dump(mode="json")
        return train(cfg, tmp_path / arch, NullRecorder())["test"]["acc"]

    auto = accuracy("auto")
    assert auto > 0.85, auto
    assert auto > accuracy("cnn") + 0.2
