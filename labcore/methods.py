"""The method catalogue, built from the config schema (each method's params model: its docstring, and
its knobs' types, defaults, bounds and descriptions): for `gatlab methods` and GET /api/methods."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from .run_config import PARAMS


def _choices(annotation) -> list | None:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return None


def methods_table() -> list[dict]:
    out = []
    for (scenario, method), params in PARAMS.items():
        knobs = [
            {
                "name": k,
                "default": f.default,
                "help": f.description or "",
                "choices": _choices(f.annotation),
                "type": getattr(f.annotation, "__name__", str(f.annotation)),
            }
            for k, f in params.model_fields.items()
        ]
        out.append({"scenario": scenario, "method": method, "help": params.__doc__, "knobs": knobs})
    return out
