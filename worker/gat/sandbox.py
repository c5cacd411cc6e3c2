"""The robustness panel on a model from elsewhere, in a child process that sees only its inputs.

A TorchScript file is a program: its operators can read and write files (`torch.from_file`), loop
forever or allocate without bound. So an uploaded or data-root model is never run in the worker.
The worker writes what the panel needs into a fresh scratch directory (the run config, the dataset's
tensors as safetensors, the model file), and a child process evaluates it there:

- with Debian's `bubblewrap` (`bwrap`), in new namespaces (no network, its own process tree, no
  capabilities) whose file system holds only the system's and Python's read-only files, the lab's
  own code and the scratch directory: no runs, uploads, data root, database settings or secrets;
- with a memory limit (RLIMIT_DATA: a larger allocation fails in the child, not the worker), a file
  size limit, and the job's wall-clock limit, after which it is killed;
- killed at once when the run is cancelled (the worker's heartbeat reads the cancel flag).

The child hands back only JSON (the panel's result and its image gallery), read by the worker with
size limits; nothing of it is unpickled. `python -m worker.gat.sandboxed JOB_DIR` is the child.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import data as gdata

log = logging.getLogger(__name__)
RESULT_MAX_BYTES = 64 << 20  # what the worker reads back of the child's answers
LOG_LINES_MAX = 2000  # the child's own log lines copied into the run's log


class SandboxError(RuntimeError):
    """The evaluation could not be run, or the child failed; the message is meant for the user."""


class TimeLimit(SandboxError):
    pass


def bwrap() -> str | None:
    return shutil.which("bwrap")


def _splits(d: gdata.Data) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(d, name)
        out[f"{name}.x"], out[f"{name}.y"] = split.x.contiguous(), split.y.contiguous()
        for k, v in split.extra.items():
            out[f"{name}.extra.{k}"] = v.contiguous()
    return out


def write_inputs(job_dir: Path, d: gdata.Data, config: dict, model_file: Path, device: str) -> None:
    """What the child may read: the config, the dataset's tensors (no pickle) and the model."""
    save_file(_splits(d), str(job_dir / "data.safetensors"))
    meta = {
        "name": d.name, "num_classes": d.num_classes, "mean": d.mean, "std": d.std,
        "info": d.info, "tasks": d.tasks,
    }  # fmt: skip
    suffix = ".safetensors" if model_file.suffix == ".safetensors" else ".pt"
    shutil.copyfile(model_file, job_dir / f"model{suffix}")
    job = {"config": config, "data": meta, "model": f"model{suffix}", "device": device}
    (job_dir / "job.json").write_text(json.dumps(job, default=str))


def read_data(job_dir: Path, meta: dict) -> gdata.Data:
    tensors = load_file(str(job_dir / "data.safetensors"))
    split = {}
    for name in ("train", "val", "test"):
        prefix = f"{name}.extra."
        extra = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        split[name] = gdata.Split(tensors[f"{name}.x"], tensors[f"{name}.y"], extra)
    return gdata.Data(
        name=meta["name"], train=split["train"], val=split["val"], test=split["test"],
        num_classes=meta["num_classes"], mean=meta["mean"], std=meta["std"], info=meta["info"],
        tasks=meta["tasks"],
    )  # fmt: skip


def _binds(job_dir: Path, device: str) -> list[str]:
    """bwrap's arguments: read-only system and Python files, the lab's code, the job directory."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf"):
        if Path(f).exists():
            args += ["--ro-bind", f, f]
    mounted = [Path("/usr")]
    import labcore.run_config
    import worker

    # The lab's own code the core runs: worker/, and the run config's schema it reads (labcore/,
    # torch-free; settings and secrets come from the environment, which the child does not get).
    code = [Path(worker.__file__).parent, Path(labcore.run_config.__file__).parent]
    for p in (Path(sys.base_prefix), Path(sys.prefix), *code):
        p = p.resolve()
        if not any(p.is_relative_to(m) for m in mounted):
            args += ["--ro-bind", str(p), str(p)]
            mounted.append(p)
    if device.startswith("cuda"):
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    return [*args, "--bind", str(job_dir), "/job", "--chdir", "/job"]


def _env(code_parent: Path) -> dict[str, str]:
    keep = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "LANG")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin", HOME="/job", PYTHONPATH=str(code_parent),
        PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1",
    )  # fmt: skip
    return env


def command(job_dir: Path, device: str, *, isolate: bool) -> list[str]:
    import worker

    child = [sys.executable, "-m", "worker.gat.sandboxed", "/job" if isolate else str(job_dir)]
    if not isolate:
        return child
    base = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    base += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--clearenv"]
    for k, v in _env(Path(worker.__file__).parent.parent.resolve()).items():
        base += ["--setenv", k, v]
    return [bwrap(), *base, *_binds(job_dir, device), *child]


def _limits(memory_bytes: int, file_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _copy_log(stream, lines: list[str]) -> None:
    """The child's log lines into the run's log (bounded), the last ones kept for its error."""
    for n, raw in enumerate(stream):
        line = raw.decode("utf-8", "replace").rstrip()[:500]
        lines.append(line)
        del lines[:-20]
        if n < LOG_LINES_MAX:
            log.info("evaluation: %s", line)


def _read_json(path: Path, what: str):
    if not path.is_file() or path.is_symlink():
        raise SandboxError(f"the evaluation wrote no {what}")
    if path.stat().st_size > RESULT_MAX_BYTES:
        raise SandboxError(f"the evaluation's {what} is over {RESULT_MAX_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise SandboxError(f"the evaluation's {what} is not JSON") from None


def evaluate(
    model_file: Path,
    config: dict,
    d: gdata.Data,
    *,
    device: torch.device,
    isolate: bool,
    time_limit_s: float,
    memory_bytes: int,
    should_stop: Callable[[], bool],
    scratch: Path | None = None,
) -> tuple[dict, dict]:
    """Run the panel on `model_file` in a child process; (result, gallery). Raises TimeLimit past
    `time_limit_s`, `Stopped`-like `InterruptedError` when `should_stop()` turns true (the child is
    killed first), SandboxError when the child fails."""
    if isolate and bwrap() is None:
        raise SandboxError(
            "evaluating a TorchScript model needs a sandbox: install bubblewrap (Debian: apt-get install"
            " bubblewrap) on the worker, or set GATLAB_SANDBOX=none on a single-user machine"
        )
    job_dir = Path(tempfile.mkdtemp(prefix="gatlab-eval-", dir=scratch))
    try:
        write_inputs(job_dir, d, config, model_file, str(device))
        (job_dir / "out").mkdir()
        proc = subprocess.Popen(
            command(job_dir, str(device), isolate=isolate),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limits(memory_bytes, max(memory_bytes, 1 << 30)),
            env=None if isolate else {**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        tail: list[str] = []
        reader = threading.Thread(target=_copy_log, args=(proc.stderr, tail), daemon=True)
        reader.start()
        _wait(proc, should_stop, time_limit_s)
        reader.join(timeout=5)
        return _answer(job_dir, proc.returncode, tail)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _wait(proc: subprocess.Popen, should_stop: Callable[[], bool], time_limit_s: float) -> None:
    """Until the child ends; killed on `should_stop()` (InterruptedError) or past the limit (TimeLimit)."""
    deadline = time.monotonic() + time_limit_s
    while proc.poll() is None:
        if should_stop():
            _kill(proc)
            raise InterruptedError("stopped while the model was evaluated")
        if time.monotonic() > deadline:
            _kill(proc)
            raise TimeLimit(
                f"the evaluation ran past its time limit of {time_limit_s:.0f} s"
                " (GATLAB_JOB_TIME_LIMIT_S) and was stopped"
            )
        time.sleep(0.2)


def _answer(job_dir: Path, returncode: int, tail: list[str]) -> tuple[dict, dict]:
    """The child's (result, gallery), or SandboxError with its reason."""
    answer = _read_json(job_dir / "out" / "answer.json", "answer")
    if not isinstance(answer, dict) or "error" in answer or returncode != 0:
        why = answer.get("error") if isinstance(answer, dict) else None
        if why is None and returncode == -signal.SIGKILL:
            why = "killed (out of memory?)"
        raise SandboxError(why or f"the evaluation exited with {returncode}: {' | '.join(tail[-3:])}")
    result = answer.get("result")
    if not isinstance(result, dict):
        raise SandboxError("the evaluation's answer holds no result")
    return result, _read_json(job_dir / "out" / "gallery.json", "gallery")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
