"""Launching ``torchrun`` on the gloo backend (CPU) and comparing runs' weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main

RECIPE = Path(__file__).with_name("two_clip_tasks.yaml")
LAUNCH_TIMEOUT_S = 240


@pytest.fixture
def recipe_args(tiny_checkpoints) -> list[str]:
    """``vmerge run`` arguments for the two-task CLIP recipe with its checkpoints filled in."""
    return [
        str(RECIPE),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]  # fmt: skip


def batch_sizes(a: int, b: int) -> list[str]:
    return ["--set", f"tasks.a.batch_size={a}", "--set", f"tasks.b.batch_size={b}"]


def run_here(argv: list[str]) -> None:
    """``vmerge run`` in this process (a world of one)."""
    assert main(["run", *argv]) == 0


def torchrun(argv: list[str], *, nproc: int = 2) -> str:
    """``torchrun --standalone`` (a free port of its own) of ``vmerge run``; returns stderr.

    Every rank uses one thread; on a timeout the whole launch (its process group) is killed.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "mergekit_vision.cli", "run", *argv,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    text = err.decode(errors="replace")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{text[-6000:]}"
    return out.decode(errors="replace") + text


def weights(run: Path, checkpoint: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / checkpoint / "model.safetensors"))


def max_difference(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, prefix: str = ""
) -> float:
    """Largest absolute difference over the tensors whose names start with ``prefix``."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k.startswith(prefix))


class Runs:
    """The helpers above, for tests (conftest modules are not importable by name)."""

    recipe = RECIPE
    batch_sizes = staticmethod(batch_sizes)
    run_here = staticmethod(run_here)
    torchrun = staticmethod(torchrun)
    weights = staticmethod(weights)
    max_difference = staticmethod(max_difference)


@pytest.fixture(scope="session")
def runs() -> type[Runs]:
    return Runs


@pytest.fixture(scope="session")
def one_process(tmp_path_factory, tiny_checkpoints) -> Path:
    """The reference run: one process, batch 4 per task, pcgrad in the two-task stage."""
    out = tmp_path_factory.mktemp("one_process") / "run"
    args = [
        str(RECIPE),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]  # fmt: skip
    run_here([*args, "--output", str(out)])
    return out
