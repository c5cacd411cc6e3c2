"""API request and response bodies (the run config itself lives in backend.run_config)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from labcore.run_config import NO_NUL

Text = Annotated[str, StringConstraints(pattern=NO_NUL, max_length=200)]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(
        description="A run config: name, scenario, method, dataset, model, train, params, eval."
    )
    experiment: Text | None = None
    tags: list[Text] = Field(default_factory=list, max_length=50)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any]
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted knob path -> values, e.g. {'params.lam': [0.1, 1]}"
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=100
    )
    experiment: Annotated[Text, Field(min_length=1)]
    tags: list[Text] = Field(default_factory=list, max_length=50)


class RunPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, Field(min_length=1)] | None = None
    tags: list[Text] | None = Field(None, max_length=50)
    notes: Annotated[str, StringConstraints(pattern=NO_NUL, max_length=100_000)] | None = None


class EvaluationCreate(BaseModel):
    """A model trained elsewhere, to be judged by the panel: sections as in a run config."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, Field(min_length=1)] | None = None
    dataset: dict[str, Any] = Field(description="As a run config's dataset section, e.g. {'name': 'digits'}.")
    eval: dict[str, Any] = Field(
        description="As a run config's eval section, naming the model: model_path (relative to the data"
        " root) or model_upload (what POST /api/models answered)."
    )
    model: dict[str, Any] | None = Field(
        None,
        description="As a run config's model section: the architecture of .safetensors weights whose file"
        " does not name it (`gatlab export` writes it into the file).",
    )
    experiment: Text | None = None
    tags: list[Text] = Field(default_factory=list, max_length=50)


class UploadOut(BaseModel):
    upload: str = Field(description="Give this as eval.model_upload to POST /api/evaluations.")
    format: Literal["torchscript", "safetensors"]
    bytes: int


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    panel: Literal["quick", "standard"] = "quick"
    n: int | None = Field(None, ge=1, le=100_000)


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    kind: str
    scenario: str
    method: str
    dataset: str
    experiment_id: int | None
    parent_id: int | None
    owner_id: int | None
    owner: str | None = None
    config: dict[str, Any]
    tags: list[str]
    notes: str
    status: str
    cancel_requested: bool
    step: int
    total_steps: int | None
    eta_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_host: str | None
    device: str | None
    error: str | None
    traceback: str | None
    retry_count: int
    summary: dict[str, Any] | None


class RunList(BaseModel):
    total: int
    items: list[RunOut]


class RunExport(BaseModel):
    runs: list[RunOut]
    metrics: list[list[Any]] = Field(description="[run_id, key, step, value] rows")
