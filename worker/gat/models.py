"""Classifiers taking images in [0, 1]: MLP, small CNN, CIFAR ResNet-20/32/56 (He et al. 2016),
ResNet-18, and the robustness literature's own: Madry et al.'s MNIST CNN, PreAct ResNet-18 (He et
al. 2016b) and WideResNet-28-10 / 34-10 (Zagoruyko & Komodakis 2016), the architectures behind
the published PGD-AT, TRADES and RobustBench numbers. Normalisation is the first layer, so
attacks and gradients live in pixel space.

Which fits which data (`arch: auto` picks it): the small CNN for 8x8 digits (it averages its
features globally after two 3x3 convolutions, which throws away the layout of larger images);
Madry et al.'s CNN for 28x28 images (MNIST, Fashion-MNIST); PreAct ResNet-18 for 32x32 colour
images (CIFAR, SVHN), WideResNet-34-10 when a GPU and time allow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(in_features: int, num_classes: int, *, width: int = 16, depth: int = 2) -> nn.Sequential:
    hidden = 4 * width
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden if depth else in_features, num_classes))
    return nn.Sequential(*layers)


def cnn(in_channels: int, num_classes: int, *, width: int = 16, depth: int = 2) -> nn.Sequential:
    """Conv-BN-ReLU blocks, doubling channels and halving resolution after the first."""
    layers: list[nn.Module] = []
    c_in, c = in_channels, width
    for i in range(depth):
        layers += [
            nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        ]
        c_in, c = c, 2 * c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet(in_channels: int, num_classes: int, *, blocks: list[int], widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c_in = widths[0]
    for stage, (n, c) in enumerate(zip(blocks, widths, strict=False)):
        for b in range(n):
            layers.append(BasicBlock(c_in, c, 2 if (b == 0 and stage > 0) else 1))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def madry_cnn(input_shape: tuple[int, int, int], num_classes: int, *, width: int = 16) -> nn.Sequential:
    """Madry et al. (2018)'s MNIST network: two 5x5 convolutions (32, 64 channels at width 16),
    each followed by 2x2 max pooling, a 1024-unit layer, then the logits."""
    c, h, w = input_shape
    c1, c2, fc = 2 * width, 4 * width, 64 * width
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 4) * (w // 4), fc),
        nn.ReLU(),
        nn.Linear(fc, num_classes),
    )


class PreActBlock(nn.Module):
    """BN-ReLU before each convolution (He et al. 2016b); `drop` is WideResNet's dropout."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(drop) if drop else nn.Identity()
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.short(out) if self.short is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + short


def preact(
    in_channels: int, num_classes: int, *, blocks: list[int], widths: list[int], stem: int
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)]
    c_in = stem
    for stage, (n, c) in enumerate(zip(blocks, widths, strict=True)):
        for b in range(n):
            layers.append(PreActBlock(c_in, c, 2 if (b == 0 and stage > 0) else 1))
            c_in = c
    layers += [
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c_in, num_classes),
    ]
    return nn.Sequential(*layers)


def auto_arch(input_shape: tuple[int, int, int]) -> str:
    """The architecture that suits an input size (see the module's docstring)."""
    c, h, w = input_shape
    if max(h, w) <= 16:
        return "cnn"
    return "madry_cnn" if c == 1 and max(h, w) <= 28 else "preact_resnet18"


def build(
    cfg: dict, *, input_shape: tuple[int, int, int], num_classes: int, mean: list[float], std: list[float]
) -> nn.Sequential:
    """The model a run config's `model` section names, behind its normalisation layer."""
    arch, width, depth = cfg.get("arch", "auto"), cfg.get("width", 16), cfg.get("depth", 2)
    arch = auto_arch(input_shape) if arch == "auto" else arch
    c, h, w = input_shape
    if arch == "madry_cnn":
        body = madry_cnn(input_shape, num_classes, width=width)
    elif arch == "preact_resnet18":
        body = preact(
            c, num_classes, blocks=[2] * 4, widths=[4 * width * 2**i for i in range(4)], stem=4 * width
        )
    elif arch in ("wrn28_10", "wrn34_10"):
        n = {"wrn28_10": 4, "wrn34_10": 5}[arch]
        body = preact(c, num_classes, blocks=[n] * 3, widths=[160, 320, 640], stem=16)
    elif arch == "mlp":
        body = mlp(c * h * w, num_classes, width=width, depth=depth)
    elif arch == "cnn":
        body = cnn(c, num_classes, width=width, depth=depth)
    elif arch in ("resnet20", "resnet32", "resnet56"):
        n = {"resnet20": 3, "resnet32": 5, "resnet56": 9}[arch]
        body = resnet(c, num_classes, blocks=[n] * 3, widths=[width, 2 * width, 4 * width])
    elif arch == "resnet18":
        body = resnet(c, num_classes, blocks=[2] * 4, widths=[4 * width * 2**i for i in range(4)])
    else:
        raise ValueError(f"model.arch: unknown architecture {arch!r}")
    return nn.Sequential(Normalize(mean, std), *body)


def task_head(dim: int, outputs: int, kind: str) -> nn.Module:
    """mlp: one hidden ELU layer as wide as the features (smooth, so second-order gradients through
    it carry information); linear: one layer, whose gradient at the features lies in the span of
    its weight rows whatever the input (a fixed direction for a binary or regression task)."""
    if kind == "linear":
        return nn.Linear(dim, outputs)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ELU(), nn.Linear(dim, outputs))
    raise ValueError(f"model.head: unknown {kind!r} (allowed: mlp, linear)")


class MultiTaskNet(nn.Module):
    """A shared encoder (a classifier's body without its last layer) and one head per task.
    Returns {task: output}: logits for classification, one value for regression. Gradient
    alignment layers live in the GREAT method's training step, never in this model."""

    def __init__(self, encoder: nn.Sequential, dim: int, tasks: dict[str, dict], head: str = "mlp"):
        super().__init__()
        self.encoder = encoder
        self.dim = dim
        self.heads = nn.ModuleDict(
            {t: task_head(dim, spec.get("classes", 1), head) for t, spec in tasks.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.encoder(x)  # N x D
        return {t: head(f) for t, head in self.heads.items()}


def build_multitask(
    cfg: dict,
    *,
    input_shape: tuple[int, int, int],
    tasks: dict[str, dict],
    mean: list[float],
    std: list[float],
) -> MultiTaskNet:
    full = build(cfg, input_shape=input_shape, num_classes=1, mean=mean, std=std)
    last = full[-1]
    return MultiTaskNet(nn.Sequential(*list(full)[:-1]), last.in_features, tasks, cfg.get("head", "mlp"))
