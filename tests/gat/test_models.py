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
