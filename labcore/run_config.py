"""Run configuration: one pydantic model shared by the CLI, the API and the worker.

Importable without FastAPI or torch. A run config has the top-level keys `name`, `scenario`,
`method`, `dataset`, `model`, `train`, `params` (the method's knobs) and `eval`. The pair
(scenario, method) selects the params model, so each method validates exactly its own knobs.
The knob defaults here mirror the keyword defaults of the core's method factories; a test keeps
the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refuse it at the door (422, not 500)
MAX_INT = 2**31 - 1  # integers the database (INTEGER) and the worker (seeds) accept


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


DatasetName = Literal[
    "digits",
    "synthetic",
    "npz",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "digits_mt",
    "multidigits",
    "multimnist",
    "cifar100_coarse",
]
# Tasks of the built-in multi-task sets (an .npz's tasks are `y` and its extra arrays).
DATASET_TASKS = {
    "digits_mt": ["digit", "parity", "gt4", "intensity"],
    "multidigits": ["left", "right"],
    "multimnist": ["left", "right"],
    "cifar100_coarse": ["fine", "coarse"],
}

# Config fields that name files: on a lab server they must stay inside the data root.
PATH_FIELDS = (
    ("dataset", "path"),
    ("dataset", "data_dir"),
    ("params", "teacher_dir"),
    ("eval", "model_path"),
)


class DatasetConfig(_Strict):
    name: DatasetName = Field(description="Data source; digits and synthetic need no files.")
    path: str | None = Field(
        None, pattern=NO_NUL, description="The .npz file (npz; multidigits: its source images)."
    )
    data_dir: str = Field("data", pattern=NO_NUL, description="Folder of torchvision datasets.")
    download: bool = Field(False, description="Allow torchvision to download the dataset.")
    fraction: float = Field(1.0, gt=0, le=1, description="Fraction of the training split used.")
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="Validation share of the train pool.")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Test share, for sources without their own test split."
    )
    split_seed: int = Field(0, ge=0, le=MAX_INT, description="Seed of the fixed train/val/test split.")
    size: int = Field(600, ge=30, le=100_000, description="Examples in the synthetic set.")


class ModelConfig(_Strict):
    arch: Literal[
        "auto",
        "mlp",
        "cnn",
        "madry_cnn",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet18",
        "preact_resnet18",
        "wrn28_10",
        "wrn34_10",
    ] = Field(
        "auto",
        description="auto: the small CNN for 8x8 digits, Madry et al.'s CNN for 28x28 grey images, PreAct"
        " ResNet-18 for 32x32 colour; madry_cnn, preact_resnet18 and wrn28_10 / wrn34_10 are the robustness"
        " literature's own (docs: which fits which data).",
    )
    width: int = Field(
        16,
        ge=1,
        le=512,
        description="Base channels (CNN/ResNet; 16 gives the published sizes of madry_cnn and preact_resnet18;"
        " ignored by wrn*) or hidden units / 4 (MLP).",
    )
    depth: int = Field(2, ge=1, le=8, description="Hidden layers (MLP) or conv blocks (CNN).")
    head: Literal["mlp", "linear"] = Field(
        "mlp",
        description="Multi-task heads: mlp (one hidden layer) or linear. With linear heads each task's gradient at"
        " the shared features keeps a fixed direction, so gradient alignment (GREAT's GALs) cannot succeed.",
    )


class TrainConfig(_Strict):
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=8192)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, lt=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augment: bool = Field(False, description="Random crop and flip (32x32 colour sets).")
    seed: int = Field(0, ge=0, le=MAX_INT)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stats_every: int = Field(20, ge=1, le=MAX_INT, description="Steps between gradient-statistics records.")
    log_every: int = Field(1, ge=1, le=MAX_INT, description="Steps between loss records.")
    val_pgd_steps: int = Field(
        0,
        ge=0,
        le=1000,
        description="Robust validation accuracy (val/pgd) every epoch: PGD with this many steps at the"
        " dataset's standard L-inf radius (classifiers; 0: off). Tune robust methods on it, never on test.",
    )


class EvalConfig(_Strict):
    panel: Literal["none", "quick", "standard"] = "quick"
    n: int | None = Field(
        None, ge=1, le=1_000_000, description="Test examples attacked; the panel's default if unset."
    )
    eps: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="L-inf epsilon grid; the dataset's default if unset."
    )
    eps_l2: list[Annotated[float, Field(ge=0, le=100)]] | None = None
    seed: int = Field(0, ge=0, le=MAX_INT, description="Seed of the attacked subset and of the attacks.")
    model_path: str | None = Field(
        None,
        pattern=NO_NUL,
        description="Evaluate this model (TorchScript, images in [0, 1] -> logits; or .safetensors weights of"
        " a lab architecture) instead of training one; in the lab, relative to the data root.",
    )
    model_upload: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}\.(pt|safetensors)$",
        description="Evaluate a model uploaded with POST /api/models (the name it answered) instead.",
    )


# ---- method knobs (defaults mirror worker.gat.methods) --------------------------------------

GradNorm = Literal["none", "l2", "standardize"]
LamSchedule = Literal["constant", "warmup", "dann"]


class AuxKnobs(_Strict):
    grad_norm: GradNorm = Field("l2", description="How g is normalised before A (l2: unit RMS).")
    aux_arch: Literal["auto", "cnn", "mlp"] = Field(
        "auto", description="A's architecture; auto picks CNN for image-shaped g."
    )
    aux_width: int = Field(32, ge=4, le=1024, description="A's channels / hidden units.")
    aux_lr: float = Field(1e-3, gt=0, le=1, description="A's Adam learning rate.")


class AdvKnobs(AuxKnobs):
    lam: float = Field(
        0.1,
        ge=0,
        le=100,
        description="Reversal strength lambda (0.1: see docs/results; 1.0 collapses digits models).",
    )
    lam_schedule: LamSchedule = Field("constant", description="constant, warmup (linear) or dann ramp.")
    warmup: float = Field(0.1, gt=0, le=1, description="Training fraction of the linear warm-up.")
    adv_every: int = Field(1, ge=1, le=MAX_INT, description="Apply the adversarial term every k steps.")


GradModeField = Field(
    "eval",
    description="Mode the gradient is taken in: eval (running BatchNorm statistics, as an attacker takes it)"
    " or train (the training forward's batch statistics: each example's gradient mixes in the batch's).",
)


class GradModeKnob(_Strict):
    grad_mode: Literal["eval", "train"] = GradModeField


class InputGradKnobs(GradModeKnob):
    grad_of: Literal["label", "predicted", "margin"] = Field(
        "label",
        description="The loss behind g: label (cross entropy with the true class, the attacks' tensor),"
        " predicted (with the predicted class) or margin (top logit minus the runner-up): the last two carry"
        " no label.",
    )


class ErmParams(_Strict):
    """Plain cross entropy (empirical risk minimisation)."""


class TunedGatKnobs(_Strict):
    """The defense game's defaults from bench/tune.py (docs/results/tune-digits.md): larger lambda
    let the model give up accuracy in eval mode (see docs/results/game-digits.md)."""

    lam: float = Field(
        0.03, ge=0, le=100, description="Reversal strength lambda (0.03: tuned on validation)."
    )
    aux_width: int = Field(16, ge=4, le=1024, description="A's channels / hidden units.")
    aux_lr: float = Field(3e-3, gt=0, le=1, description="A's Adam learning rate.")


class GreatParams(TunedGatKnobs, InputGradKnobs, AdvKnobs):
    """GREAT: A classifies the input gradient by class; f learns through the GRL to hide it."""


class GreaceParams(InputGradKnobs, AuxKnobs):
    """GREACE loss: negatives A confuses with the true class are pushed down harder."""

    beta: float = Field(
        1.0, ge=0, le=100, description="GREACE weight on confused classes (0: cross entropy)."
    )


class GreatGreaceParams(TunedGatKnobs, InputGradKnobs, AdvKnobs):
    """GREAT and GREACE together."""

    beta: float = Field(
        1.0, ge=0, le=100, description="GREACE weight on confused classes (0: cross entropy)."
    )


class EpsKnob(_Strict):
    eps: float | None = Field(
        None, ge=0, le=1, description="L-inf radius; the dataset's standard one if unset."
    )


class FgsmAtParams(EpsKnob):
    """FGSM adversarial training with random start (Wong et al. 2020)."""

    alpha: float = Field(1.25, gt=0, le=10, description="Step size as a multiple of eps (Wong et al.).")


class PgdAtParams(EpsKnob):
    """PGD adversarial training (Madry et al. 2018)."""

    steps: int = Field(10, ge=1, le=1000)
    step_mult: float = Field(2.5, gt=0, le=10, description="Step size = step_mult * eps / steps.")


class TradesParams(EpsKnob):
    """TRADES (Zhang et al. 2019)."""

    beta: float = Field(
        10.0,
        ge=0,
        le=100,
        description="Weight of the robust KL term (10: tuned on validation; the paper's 6 was 5 points lower).",
    )
    steps: int = Field(10, ge=1, le=1000)
    step_mult: float = Field(2.5, gt=0, le=10)


class IgrParams(GradModeKnob):
    """Input-gradient regularisation by double backprop (Ross & Doshi-Velez 2018)."""

    weight: float = Field(
        0.1, ge=0, le=1e4, description="Weight of the squared input-gradient norm (0.1: tuned on validation)."
    )


DEFENSE_PARAMS: dict[str, type[BaseModel]] = {
    "erm": ErmParams,
    "great": GreatParams,
    "greace": GreaceParams,
    "great+greace": GreatGreaceParams,
    "fgsm_at": FgsmAtParams,
    "pgd_at": PgdAtParams,
    "trades": TradesParams,
    "igr": IgrParams,
}

# ---- distillation (docs/design.md section 3) -----------------------------------------------------

ArchName = Literal["mlp", "cnn", "resnet20", "resnet32", "resnet56", "resnet18"]


class TeacherKnobs(_Strict):
    """Where the fixed teacher comes from: a finished run directory, a run of this lab, or a first
    phase of the same job (trained with ERM on the full training split)."""

    teacher_dir: str | None = Field(
        None, pattern=NO_NUL, description="A finished run directory (CLI and API)."
    )
    teacher_run: int | None = Field(
        None, ge=1, lt=2**31, description="A succeeded run of this lab (service only)."
    )
    teacher_arch: ArchName = Field("cnn", description="Phase-1 teacher architecture (no dir/run given).")
    teacher_width: int = Field(32, ge=1, le=512, description="Phase-1 teacher width.")
    teacher_epochs: int = Field(20, ge=1, le=10_000, description="Phase-1 teacher epochs.")


class StudentParams(TeacherKnobs):
    """The student alone: cross entropy on its (possibly small) training set."""


class SoftTargetParams(TeacherKnobs):
    """Hinton et al. 2015: cross entropy plus KL to the teacher's tempered softmax."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature tau.")
    alpha: float = Field(
        0.9, ge=0, le=1, description="Weight of the soft-target term (1 - alpha on cross entropy)."
    )


class JacobianParams(GradModeKnob, TeacherKnobs):
    """Srinivas & Fleuret 2018: soft targets plus matching the normalised input Jacobians of the true
    class's output activation, student against teacher."""

    match: Literal["logit", "ce"] = Field(
        "logit",
        description="logit: the Jacobian of the true class's output activation, d z_y / dx (the"
        " published method); ce: the input gradient of each network's cross entropy, J^T (p - e_y)"
        " (a variant: each network's own softmax error enters the matched tensor).",
    )

    beta: float = Field(
        1.0, ge=0, le=1e4, description="Weight of the L2 distance between normalised input gradients."
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature tau.")
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the soft-target term (0: the gradient term on cross entropy alone).",
    )


class DistillAdvKnobs(GradModeKnob, TeacherKnobs, AdvKnobs):
    grad_wrt: Literal["input", "logits"] = Field("input", description="Which gradient A sees.")


class DistillGreatParams(DistillAdvKnobs):
    """GREAT: a binary A tells teacher from student gradients; the student learns to pass as the teacher."""

    lam: float = Field(
        0.3, ge=0, le=100, description="Reversal strength lambda (0.3: tuned on validation, tune-digits.md)."
    )
    aux_width: int = Field(64, ge=4, le=1024, description="A's channels / hidden units (64: tuned).")


class DistillGreatSoftParams(DistillAdvKnobs):
    """GREAT plus soft targets."""

    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature tau.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft-target term.")


DISTILL_PARAMS: dict[str, type[BaseModel]] = {
    "student": StudentParams,
    "soft_targets": SoftTargetParams,
    "jacobian_matching": JacobianParams,
    "great": DistillGreatParams,
    "great+soft_targets": DistillGreatSoftParams,
}

# ---- multi-task learning (docs/design.md section 3) ----------------------------------------------


class SingleTaskParams(_Strict):
    """One task alone: the reference for delta-m%."""

    task: str = Field(
        "", max_length=128, pattern=NO_NUL, description="The task trained (the dataset's first if empty)."
    )


class EqualParams(_Strict):
    """Sum of task losses with fixed weights."""

    weights: dict[str, Annotated[float, Field(ge=0, le=1e4)]] | None = Field(
        None, description="Fixed loss weight per task (1 for tasks not named)."
    )


class UncertaintyParams(_Strict):
    """Kendall et al. 2018: weights from learned homoscedastic uncertainty."""

    weight_lr: float = Field(0.01, gt=0, le=1, description="Adam learning rate of the log variances.")


class GradNormParams(_Strict):
    """Chen et al. 2018: weights that balance gradient norms at the shared layer."""

    alpha: float = Field(1.5, ge=0, le=10, description="Restoring force towards equal training rates.")
    weight_lr: float = Field(0.025, gt=0, le=1, description="Adam learning rate of the task weights.")


class PcGradParams(_Strict):
    """Yu et al. 2020: project away conflicting task gradients."""


class MultitaskGreatParams(AdvKnobs):
    """GREAT: gradient alignment layers trained against a task-id classifier of the gradients."""

    second_order: bool = Field(
        True,
        description="A's reversed loss also trains the heads and encoder through second-order gradients (false:"
        " only the GAL scales play the game).",
    )


MULTITASK_PARAMS: dict[str, type[BaseModel]] = {
    "single_task": SingleTaskParams,
    "equal": EqualParams,
    "uncertainty": UncertaintyParams,
    "gradnorm": GradNormParams,
    "pcgrad": PcGradParams,
    "great": MultitaskGreatParams,
}
# Knobs the trainer consumes (to build the teacher) rather than the method factory.
TRAINER_KNOBS = set(TeacherKnobs.model_fields)

PARAMS: dict[tuple[str, str], type[BaseModel]] = {
    **{("defense", m): p for m, p in DEFENSE_PARAMS.items()},
    **{("distill", m): p for m, p in DISTILL_PARAMS.items()},
    **{("multitask", m): p for m, p in MULTITASK_PARAMS.items()},
}


class _RunBase(_Strict):
    name: str = Field("run", min_length=1, max_length=200, pattern=NO_NUL)
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


class _MultitaskBase(_RunBase):
    @field_validator("dataset")
    @classmethod
    def _multi_task_set(cls, v: DatasetConfig) -> DatasetConfig:
        if v.name not in DATASET_TASKS and v.name != "npz":
            raise ValueError(f"{v.name} has one task; multi-task sets: {', '.join(DATASET_TASKS)}, npz")
        return v

    @field_validator("params", check_fields=False)
    @classmethod
    def _tasks_exist(cls, v: BaseModel, info: ValidationInfo) -> BaseModel:
        """Task names in the knobs must be tasks of a built-in set (an npz's are checked on load)."""
        ds = info.data.get("dataset")
        known = DATASET_TASKS.get(ds.name) if ds else None
        named = [getattr(v, "task", "") or None, *(getattr(v, "weights", None) or {})]
        bad = [t for t in named if t and known and t not in known]
        if bad:
            raise ValueError(f"task(s) {bad} not in {ds.name} (tasks: {', '.join(known)})")
        return v


def _run_model(scenario: str, method: str, params: type[BaseModel]) -> type[BaseModel]:
    """One run model per (scenario, method): typed params, a literal scenario and method."""
    fields: dict[str, Any] = {
        "scenario": (Literal[scenario], ...),  # type: ignore[valid-type]
        "method": (Literal[method], ...),  # type: ignore[valid-type]
        "params": (params, params()),
    }
    title = f"{scenario}:{method}".replace("+", "_")
    return create_model(title, __base__=_MultitaskBase if scenario == "multitask" else _RunBase, **fields)


RUN_MODELS = {key: _run_model(*key, params) for key, params in PARAMS.items()}


def _tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return f"{value.get('scenario')}:{value.get('method')}"
    return f"{getattr(value, 'scenario', None)}:{getattr(value, 'method', None)}"


_ALLOWED = ", ".join(f"{s}:{m}" for s, m in PARAMS)

RunConfig = Annotated[
    # Union over a tuple built at run time: `X | Y` cannot be spread from a generator.
    Union[tuple(Annotated[m, Tag(f"{s}:{me}")] for (s, me), m in RUN_MODELS.items())],  # type: ignore[misc]  # noqa: UP007
    Discriminator(
        _tag,
        custom_error_type="unknown_method",
        custom_error_message=f"unknown scenario:method; allowed: {_ALLOWED}",
        custom_error_context={"discriminator": "scenario:method"},
    ),
]


_ADAPTER: TypeAdapter = TypeAdapter(RunConfig)


def parse_run_config(data: Any) -> BaseModel:
    """Validate a dict into the run model of its (scenario, method)."""
    return _ADAPTER.validate_python(data)


def run_config_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The run config's JSON schema (the OpenAPI document places its definitions with `ref_template`)."""
    return _ADAPTER.json_schema(ref_template=ref_template)


def config_errors(err: ValidationError) -> list[dict]:
    """Errors with locations in config terms: the union's tag is dropped from the path."""
    out = []
    for e in err.errors(include_url=False, include_context=False, include_input=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ":" in p)]
        if e["type"] == "unknown_method":
            loc = ["method"]
        out.append({"loc": loc, "msg": e["msg"], "type": e["type"]})
    return out


def format_errors(err: ValidationError) -> list[str]:
    """One readable line per error: 'dataset.fraction: Input should be ...'."""
    return [f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in config_errors(err)]
