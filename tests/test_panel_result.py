"""The panel's result has one typed shape (labcore.panel.PanelResult) and one mapping to and from the
store's three tables: what the worker's panel returned comes back from the database as it was, and the
API, the CLI and the study report read the same fields."""

from __future__ import annotations

from sqlalchemy.orm import Session

from labcore import crud, lifecycle
from labcore.db import Base, make_engine
from labcore.panel import SUMMARY_KEYS, PanelResult
from labcore.services import panels
from labcore.study import record

RESULT = {  # as worker/gat/panel.py returns it (eval.json), less the attacks a real panel adds
    "panel": "quick",
    "n": 50,
    "seed": 3,
    "clean_accuracy": 0.9,
    "clean_ci": [0.79, 0.95],
    "subset_hash": "abc",
    "std_eps": 0.1,
    "std_eps_l2": 0.5,
    "rows": [
        {"attack": "pgd", "norm": "linf", "eps": 0.1, "accuracy": 0.4, "n": 50, "ci": [0.3, 0.5], "steps": 10,
         "restarts": 1, "info": None},
        {"attack": "pgd_l2", "norm": "l2", "eps": 0.5, "accuracy": 0.6, "n": 50, "ci": [0.5, 0.7], "steps": 10,
         "restarts": 1, "info": None},
        {"attack": "pgd_target_ll", "norm": "linf", "eps": 0.05, "accuracy": 0.7, "n": 50, "ci": [0.6, 0.8],
         "steps": 10, "restarts": 1, "info": {"target_success": 0.2, "target_ci": [0.1, 0.3]}},
        {"attack": "noise", "norm": "linf", "eps": 0.1, "accuracy": 0.88, "n": 50, "ci": [0.8, 0.9], "steps": None,
         "restarts": 20, "info": None},
    ],
    "deterministic": {"max_logit_change": 0.0, "same": True},
    "autoattack_warnings": [],
    "per_example": {"eps": 0.1, "eps_l2": 0.5, "correct": {"pgd": "0f"}},
    "min_norm": {"attack": "fab", "median": 0.07, "found": 40, "n": 50},
    "probe": {"accuracy": 0.5, "ci": [0.4, 0.6], "n_test": 100, "chance": 0.1},
    "spec": {"n": 200, "steps": 10},
    "checks": [
        {"name": "large_eps_to_zero", "passed": True, "severity": "masking", "detail": "ok"},
        {"name": "ce_margin_agree", "passed": False, "severity": "weaker_attack", "detail": "differ"},
    ],
    "masking_suspected": False,
    "seconds": 12.5,
}  # fmt: skip


def test_a_result_goes_into_the_store_and_comes_back_the_same(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/lab.db")
    Base.metadata.create_all(engine)
    result = PanelResult.model_validate(RESULT)
    with Session(engine) as s:
        run = crud.create_run(s, config={"name": "r", "scenario": "defense", "method": "erm",
                                         "dataset": {"name": "digits"}})  # fmt: skip
        lifecycle.finish(run, lifecycle.SUCCEEDED)
        crud.store_eval(s, run_id=run.id, result=result)
        s.commit()
        back = panels.read(s, run.id, None)
    assert back == result
    assert list(back.summary()) == [k for k in SUMMARY_KEYS if k in RESULT]
    view = back.view()
    assert view["masking_suspected"] is False and view["all_passed"] is False  # a weaker attack only
    assert view["rows"][2]["info"]["target_success"] == 0.2 and view["rows"][0]["ci"] == [0.3, 0.5]
    assert {c["panel"] for c in view["checks"]} == {"quick"}


def test_the_standard_radius_rows_are_what_a_study_reads():
    result = PanelResult.model_validate(RESULT)
    assert [r.attack for r in result.at_standard_eps()] == ["pgd", "pgd_l2", "noise"]  # L-inf 0.1, L2 0.5
    rec = record("erm", 0, "succeeded", 1, {"test": {"acc": 0.9}}, result)
    assert rec["metrics"] == {"test acc": 0.9, "pgd": 0.4, "pgd_l2": 0.6}  # noise is a floor, not an attack
    assert rec["weaker_checks"] == ["ce_margin_agree"] and rec["failed_checks"] == []
    assert rec["sizes"]["n_panel"] == 50 and rec["examples"] == {"pgd": "0f"}


def test_a_masking_check_that_failed_is_suspected_and_none_ran_is_unknown():
    failed = {**RESULT, "checks": [{"name": "large_eps_to_zero", "passed": False, "detail": "0.4"}]}
    assert PanelResult.model_validate(failed).masking_suspected is True  # severity defaults to masking
    assert PanelResult.model_validate({**RESULT, "checks": []}).masking_suspected is None
