"""The sandbox's child: `python -m worker.gat.sandboxed JOB_DIR` runs the panel on JOB_DIR's model and
data (written by `sandbox.write_inputs`) and leaves its answer, JSON only, in JOB_DIR/out/answer.json."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from . import job
from .recorder import Recorder
from .sandbox import read_data

log = logging.getLogger(__name__)


def main(job_dir: str) -> int:
    """The child: the panel on /job's model and data; its answer in /job/out/answer.json."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    root = Path(job_dir)
    out = root / "out"
    try:
        spec = json.loads((root / "job.json").read_text())
        d = read_data(root, spec["data"])
        device = torch.device(spec["device"])
        model = job.load_external(root / spec["model"], d, device, spec["config"].get("model"))

        class Keep(Recorder):
            def evaluation(self, result: dict) -> None:
                self.result = result

        keep = Keep()
        job.evaluate(model, spec["config"], keep, device=device, out_dir=out, data=d)
        answer = {"result": keep.result}
    except Exception as e:  # every failure goes back to the worker as a message
        log.exception("evaluation failed")
        answer = {"error": f"{e.__class__.__name__}: {str(e)[:2000]}"}
    (out / "answer.json").write_text(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
