"""The three scenarios as objects: what each one's model is, how it is scored, what its method gets
besides its knobs, what a batch's targets are, which gradient statistics it records, whether the
robustness panel attacks it, and which origin its game probe reads from the gradients.

`of(config)` is the run's scenario; the trainer asks it instead of comparing scenario names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import data as gdata
from . import models, probe, stats
from .losses import task_loss
from .recorder import Recorder


@torch.no_grad()
def evaluate(model: nn.Module, split: gdata.Split, device: torch.device, batch_size: int = 512) -> dict:
    """Clean loss and accuracy on a split, in eval mode."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for _, x, y in gdata.batches(split, batch_size, shuffle=False):
        logits = model(x.to(device))
        loss += F.cross_entropy(logits, y.to(device), reduction="sum").item()
        correct += (logits.argmax(1).cpu() == y).sum().item()
    model.train(was)
    n = max(1, len(split))
    return {"loss": loss / n, "acc": correct / n}


@torch.no_grad()
def evaluate_tasks(model: nn.Module, data: gdata.Data, split: gdata.Split, device: torch.device) -> dict:
    """Per-task accuracy (classification) or mean squared error (regression), in eval mode."""
    was = model.training
    model.eval()
    sums = {t: 0.0 for t in data.tasks}
    for idx, x, _ in gdata.batches(split, 512, shuffle=False):
        outs, targets = model(x.to(device)), data.targets(split, idx)
        for t, spec in data.tasks.items():
            o, y = outs[t].cpu(), targets[t]
            sums[t] += (
                (o.argmax(1) == y).sum().item()
                if spec["kind"] == "cls"
                else (o.squeeze(1) - y).pow(2).sum().item()
            )
    model.train(was)
    n = max(1, len(split))
    return {f"{t}/{'acc' if spec['kind'] == 'cls' else 'mse'}": sums[t] / n for t, spec in data.tasks.items()}


class Scenario:
    """A classifier trained on labels (defense); the others change what differs."""

    name = "defense"
    attacked = True  # the robustness panel (and validation PGD) attack its models
    needs_teacher = False
    probe_reads = "the class from input gradients"

    def build(self, model_cfg: dict, data: gdata.Data) -> nn.Module:
        return models.build(
            model_cfg,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            mean=data.mean,
            std=data.std,
        )

    def evaluate(self, model: nn.Module, data: gdata.Data, split: gdata.Split, device: torch.device) -> dict:
        return evaluate(model, split, device)

    def method_context(self, data: gdata.Data, teacher: nn.Module | None) -> dict:
        """What the method's factory gets besides its knobs."""
        return {}

    def targets(self, data: gdata.Data, idx, y: torch.Tensor, device: torch.device):
        return y.to(device)

    def tasks(self, data: gdata.Data) -> dict | None:
        return None

    def record_stats(
        self, model, data, x, y, *, step: int, grad_norm: str, edges, recorder: Recorder
    ) -> None:
        """Statistics of the clean input gradient, taken in eval mode so BN statistics stay untouched."""
        row = stats.layer_grad_norms(model)
        model.eval()
        g = stats.input_grad(model, x, y)
        model.train()
        row.update(stats.class_stats(g, y, data.num_classes))
        recorder.log(step, row)
        recorder.histogram(step, "input_grad", edges.tolist(), stats.histogram(g, grad_norm, edges))

    def probe(self, model, teacher, data, *, device: torch.device, seed: int) -> dict:
        return probe.gradient_probe(model, data, device=device, seed=seed)


class Distill(Scenario):
    """A student trained against a frozen teacher; its game: teacher vs student from input gradients."""

    name = "distill"
    needs_teacher = True
    probe_reads = "teacher vs student from input gradients"

    def method_context(self, data, teacher):
        return {"teacher": teacher}

    def probe(self, model, teacher, data, *, device, seed):
        return probe.teacher_student_probe(model, teacher, data, device=device, seed=seed)


class MultiTask(Scenario):
    """One encoder with a head per task; its game: task id from per-task gradients at the features."""

    name = "multitask"
    attacked = False  # no single classifier to attack
    probe_reads = "task id from per-task gradients at the shared features"

    def build(self, model_cfg, data):
        return models.build_multitask(
            model_cfg, input_shape=data.input_shape, tasks=data.tasks, mean=data.mean, std=data.std
        )

    def evaluate(self, model, data, split, device):
        return evaluate_tasks(model, data, split, device)

    def method_context(self, data, teacher):
        return {"tasks": data.tasks}

    def targets(self, data, idx, y, device):
        return {k: v.to(device) for k, v in data.targets(data.train, idx).items()}

    def tasks(self, data):
        return data.tasks

    def record_stats(self, model, data, x, targets, *, step, grad_norm, edges, recorder):
        """Per-task gradient norms at the shared features and their pairwise cosine similarity."""
        row = stats.layer_grad_norms(model)
        model.eval()
        f = model.encoder(x)
        grads = {
            t: torch.autograd.grad(task_loss(h(f), targets[t], data.tasks[t]), f, retain_graph=True)[
                0
            ].flatten()
            for t, h in model.heads.items()
        }
        model.train()
        names = list(grads)
        for i, a in enumerate(names):
            row[f"task_grad_norm/{a}"] = grads[a].norm().item()
            for b in names[i + 1 :]:
                row[f"task_cos/{a}~{b}"] = F.cosine_similarity(grads[a], grads[b], dim=0).item()
        recorder.log(step, row)

    def probe(self, model, teacher, data, *, device, seed):
        return probe.task_probe(model, data, device=device, seed=seed)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (Scenario(), Distill(), MultiTask())}


def of(config: dict) -> Scenario:
    return SCENARIOS[config["scenario"]]
