import os

import pytest
import torch

from worker.gat import data as gdata
from worker.gat import models
from worker.gat.methods import make
from worker.gat.train import train_step


@pytest.fixture(scope="session")
def digits() -> gdata.Data:
    return gdata.load({"name": "digits"})


@pytest.fixture(scope="session")
def synthetic() -> gdata.Data:
    return gdata.load({"name": "synthetic", "size": 400})


def small_cnn(d: gdata.Data, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(
        {"arch": "cnn", "width": 8, "depth": 2},
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        mean=d.mean,
        std=d.std,
    )


def fit_erm(d: gdata.Data, epochs: int = 15, seed: int = 0) -> torch.nn.Module:
    model = small_cnn(d, seed)
    method = make("defense", "erm", model, num_classes=d.num_classes, input_shape=d.input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        for _, x, y in gdata.batches(d.train, 64, shuffle=True, seed=epoch):
            train_step(method, opt, None, x, y, 0.0, 0)
    return model.eval()


# Under ./scripts/mutation every mutant runs its tests in a process forked after collection: the
# model is trained once there, before any mutant is switched on (the training code is judged by its
# own tests), instead of once per mutant.
_PRETRAINED = fit_erm(gdata.load({"name": "digits"})) if os.environ.get("GATLAB_MUTATION") == "1" else None


@pytest.fixture(scope="session")
def digits_model(digits):
    """A standard (undefended) CNN on digits, trained once per test session."""
    return _PRETRAINED if _PRETRAINED is not None else fit_erm(digits)
