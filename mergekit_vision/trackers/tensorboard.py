"""TensorBoard event files in the run folder, written with ``torch.utils.tensorboard``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.trackers.base import TRACKERS, Tracker, flat_config


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files in <run>/tensorboard: scalars, the recipe as text and HParams.

    ``tensorboard --logdir runs`` then shows every run by its folder. A resumed run writes to
    the same folder and purges the events after its checkpoint (``purge_step``), so the curves
    read as one run, as ``metrics.jsonl`` does.
    """

    library = "tensorboard"
    extra = "tensorboard"

    class Params(PluginParams):
        folder: str = Field("tensorboard", description="the event files' folder in the run folder")
        flush_secs: int = Field(30, ge=1, description="seconds between writes to disk")

    def __init__(self, *, run_dir: Path, folder: str = "tensorboard", flush_secs: int = 30):
        super().__init__(run_dir=run_dir)
        self.folder, self.flush_secs = run_dir / folder, flush_secs

    def start(self, *, config: dict[str, Any], recipe_yaml: str, from_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(
            log_dir=str(self.folder),
            purge_step=from_step + 1 if from_step else None,
            flush_secs=self.flush_secs,
        )
        # Indented as a Markdown code block: TensorBoard renders text summaries as Markdown.
        text = "\n".join("    " + line for line in recipe_yaml.splitlines())
        self.writer.add_text("recipe", text, global_step=from_step)
        # The session's hyperparameters only: the HParams tab takes its metrics from the
        # scalar tags when no experiment summary names them.
        _, session_start, _ = hparams(flat_config(config), {})
        self.writer.file_writer.add_summary(session_start, from_step)

    def log(self, scalars: Mapping[str, float], *, step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self, *, failed: bool) -> None:
        self.writer.close()
