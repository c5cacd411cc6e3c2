"""The method catalogue, built from the config schema: for `gatlab methods` and GET /api/methods."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from .run_config import METHOD_HELP, PARAMS


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
        out.append(
            {"scenario": scenario, "method": method, "help": METHOD_HELP[(scenario, method)], "knobs": knobs}
        )
    return out
