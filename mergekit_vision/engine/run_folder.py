"""The run folder: everything a run writes, and the decision to start it afresh or resume it.

Layout of ``<run>/``:
- ``recipe.resolved.yaml``: the fully resolved recipe of the run;
- ``metrics.jsonl``: one JSON line per logged step (appended; a resumed run first drops the lines
  a crash wrote after its last checkpoint, so the file reads as one uninterrupted run);
- ``skipped.jsonl``: one JSON line (``step``, ``task``, ``path``, ``reason``) per data file a task
  skipped because it could not be decoded, each file once per task (trimmed on resume as
  ``metrics.jsonl`` is);
- ``checkpoints/step-<N>/`` (and the same in ``last/``):
  - ``model.safetensors``: the merged model (student backbone and heads);
  - ``train_state.pt``: optimiser, LR schedule, replay state, stream positions, step counters, RNG;
  - ``recipe.resolved.yaml``: the recipe that produced it.
Each checkpoint folder is written under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint. Everything loads with ``weights_only=True`` or safetensors. The
engine writes the folder; eval, export and predict read it through this module's names. The
recipe's experiment trackers (``logging.trackers``) receive every line ``metrics.jsonl`` does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mergekit_vision.trackers.group import TrackerGroup
from mergekit_vision.weights import load_strict, read_weights

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.resolved.yaml"
METRICS_FILE = "metrics.jsonl"
SKIPPED_FILE = "skipped.jsonl"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class TrainState:
    """Where training stands: the counters and stream positions a resume continues from.

    ``streams`` maps each task to its batch stream's position (``{"epoch", "offset"}``), so a
    resumed run draws exactly the batches the interrupted one would have drawn next.
    ``nonfinite_steps`` counts the steps skipped for a NaN or inf loss so far. ``skips`` maps each
    task to the samples it has read and skipped as undecodable (``{"read", "skipped"}``, summed
    over the ranks); checkpoints written before it existed load with none.
    """

    global_step: int = 0
    stage_index: int = 0
    step_in_stage: int = 0
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    nonfinite_steps: int = 0
    skips: dict[str, dict[str, int]] = field(default_factory=dict)


class RunFolder:
    """One run's folder (layout in the module docstring): started afresh or resumed, then
    written by the engine's main process.

    Args:
        root: the run folder.
        recipe_yaml: the resolved recipe, saved beside the run and in every checkpoint.
        is_main: whether this process writes (rank 0; the other ranks only read).
        trackers: experiment trackers, started by :meth:`begin` and handed every metrics line
            (closed by whoever opened them).
    """

    def __init__(
        self,
        root: Path,
        *,
        recipe_yaml: str,
        is_main: bool = True,
        trackers: TrackerGroup | None = None,
    ):
        self.root, self.recipe_yaml, self.is_main = root, recipe_yaml, is_main
        self.trackers = trackers or TrackerGroup()
        self.metrics = root / METRICS_FILE
        self.skipped = root / SKIPPED_FILE
        self.checkpoints = root / CHECKPOINTS_DIR

    def begin(self, *, resume: bool, model: nn.Module) -> tuple[TrainState, dict[str, Any] | None]:
        """(the state to start from, the saved state of the stage it is in, if any).

        A fresh run refuses a folder that already holds one. A resumed run loads the last
        checkpoint's weights into ``model`` and its RNG state, and drops the metric lines written
        after that checkpoint; a run that stopped before its first checkpoint restarts from step
        0 (with a warning), its metric lines dropped. The trackers start from there.
        """
        state, saved = self._begin(resume=resume, model=model)
        if self.is_main:
            self.trackers.start(recipe_yaml=self.recipe_yaml, from_step=state.global_step)
        return state, saved

    def _begin(self, *, resume: bool, model: nn.Module) -> tuple[TrainState, dict[str, Any] | None]:
        last = find_last(self.checkpoints)
        if not resume:
            if last is not None or self.metrics.exists():
                raise FileExistsError(
                    f"{self.root} already holds a run; pass --resume to continue it (or to "
                    "restart it from step 0 when it has no checkpoint yet), "
                    "or choose another --output"
                )
            if self.is_main:
                self.root.mkdir(parents=True, exist_ok=True)
                # left by an attempt that crashed before its first metrics line
                self.skipped.unlink(missing_ok=True)
            return TrainState(), None
        if last is None:
            if self.is_main:
                warnings.warn(
                    f"--resume: {self.root} holds no checkpoint yet; restarting the run from "
                    "step 0",
                    stacklevel=3,  # the engine's run, which called begin
                )
                self.root.mkdir(parents=True, exist_ok=True)
                self._truncate_metrics(0)
            return TrainState(), None
        weights, saved = load_checkpoint(last)
        load_model_weights(model, last, weights=weights)
        torch.set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        if self.is_main:
            self._truncate_metrics(state.global_step)
        return state, saved.get("stage")

    def write_recipe(self) -> None:
        if self.is_main:
            (self.root / RECIPE_FILE).write_text(self.recipe_yaml)

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one step's metrics as a JSON line, and hand it to the trackers."""
        if self.is_main:
            record = _strict_json(metrics)
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self.trackers.log(record)

    def log_skipped(self, records: list[dict[str, Any]]) -> None:
        """Append skipped files' records (``step``, ``task``, ``path``, ``reason``), one a line."""
        if self.is_main and records:
            with self.skipped.open("a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)

    def logged_skips(self) -> list[dict[str, Any]]:
        """The records ``skipped.jsonl`` holds (none when it does not exist)."""
        if not self.skipped.exists():
            return []
        return [json.loads(line) for line in self.skipped.read_text().splitlines() if line]

    def save(
        self,
        state: TrainState,
        *,
        model: dict[str, torch.Tensor],
        stage: dict[str, Any] | None,
        keep: int,
    ) -> None:
        """Checkpoint ``state`` (with the torch RNG) and the stage's state; rank 0 only."""
        if not self.is_main:
            return
        saved = {"state": asdict(state), "rng": torch.get_rng_state(), "stage": stage}
        save_checkpoint(
            self.checkpoints,
            step=state.global_step,
            model=model,
            state=saved,
            recipe_yaml=self.recipe_yaml,
            keep=keep,
        )

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric (and skipped-file) lines a crashed run wrote after its last checkpoint."""
        for path in (self.metrics, self.skipped):
            if not path.exists():
                continue
            lines = path.read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))


def read_metrics(root: Path) -> list[dict[str, Any]]:
    """The lines of a run folder's ``metrics.jsonl``, in order."""
    path = root / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} holds no {METRICS_FILE}: give a run folder that vmerge run has written to"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: nn.Module | dict[str, torch.Tensor],
    state: dict[str, Any],
    recipe_yaml: str,
    keep: int,
) -> Path:
    """Write ``root/step-<step>`` and refresh ``root/last``; prune old step folders.

    ``model`` is the module or its full state dict (gathered from shards under FSDP): a checkpoint
    never depends on how many processes wrote it.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"step": str(step)})
    torch.save(state, tmp / STATE_FILE)
    (tmp / RECIPE_FILE).write_text(recipe_yaml)
    final = root / f"step-{step}"
    _replace_dir(tmp, final)
    last_tmp = root / ".tmp-last"
    shutil.rmtree(last_tmp, ignore_errors=True)
    shutil.copytree(final, last_tmp)
    _replace_dir(last_tmp, root / "last")
    _prune(root, keep)
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; the old ``dst`` survives as ``dst.old`` until the move is done."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def find_last(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``last``, or ``last.old`` after a crash)."""
    for name in ("last", "last.old"):
        candidate = root / name
        if (candidate / STATE_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    return None


# What to do about a damaged file in a checkpoint folder.
DAMAGED_CHECKPOINT = (
    "use an intact copy of the checkpoint folder (an earlier checkpoints/step-<N> of the run "
    "copied over checkpoints/last), or train again"
)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, training state) of one checkpoint folder."""
    weights = _read_model_weights(path)
    state = read_weights(
        path / STATE_FILE,
        what="training state",
        expected="the step counters, stream positions, optimizer and RNG state that vmerge run "
        f"saves beside {MODEL_FILE} (tensors and plain containers only)",
        remedy=DAMAGED_CHECKPOINT,
    )
    return weights, state


def load_model_weights(
    model: nn.Module, checkpoint: Path, *, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """Load ``checkpoint``'s merged model weights (read here unless given) into ``model``
    strictly; a file that does not fit the model its recipe builds is a clear error."""
    path = checkpoint / MODEL_FILE
    load_strict(
        model,
        _read_model_weights(checkpoint) if weights is None else weights,
        what=f"merged model weights {path} do not fit the model the recipe builds",
        path=path,
        expected=f"the weights of the model that {RECIPE_FILE} beside them builds",
        remedy=f"use the recipe the run was trained with (its {RECIPE_FILE}) and the "
        "mergekit-vision version that trained it",
    )


def _read_model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_weights(
        checkpoint / MODEL_FILE,
        what="merged model weights",
        expected="the merged model (student and heads) that vmerge run saves as safetensors",
        remedy=DAMAGED_CHECKPOINT,
    )


def _strict_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN and inf as null: a skipped step's loss is NaN, which strict JSON readers refuse."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in metrics.items()
    }
