"""Weights & Biases runs, offline by default, in the run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.trackers.base import TRACKERS, Tracker

Mode = Literal["offline", "online", "disabled"]


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """Weights & Biases: scalars, the recipe as config; offline into <run>/wandb unless set.

    The mode is ``params.mode``, else ``WANDB_MODE``, else ``offline``: nothing leaves the
    machine unless asked (``wandb sync <run>/wandb/offline-run-*`` uploads later). The files go
    under ``WANDB_DIR`` when set, else the run folder. The W&B run is named after the run folder
    and grouped by the recipe's name; a resumed run is a new W&B run that starts at the step
    after the checkpoint.
    """

    library = "wandb"
    extra = "wandb"

    class Params(PluginParams):
        project: str | None = Field(
            None, description="W&B project (default: WANDB_PROJECT, else mergekit-vision)"
        )
        entity: str | None = Field(None, description="W&B team or user (default: WANDB_ENTITY)")
        mode: Mode | None = Field(None, description="default: WANDB_MODE, else offline")
        tags: list[str] = Field(default_factory=list)

    def __init__(
        self,
        *,
        run_dir: Path,
        project: str | None = None,
        entity: str | None = None,
        mode: Mode | None = None,
        tags: list[str] | None = None,
    ):
        super().__init__(run_dir=run_dir)
        self.project, self.entity, self.tags = project, entity, list(tags or [])
        self.mode = mode or (None if os.environ.get("WANDB_MODE") else "offline")

    def start(self, *, config: dict[str, Any], recipe_yaml: str, from_step: int) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or "mergekit-vision",
            entity=self.entity,
            # wandb reads WANDB_MODE and WANDB_DIR itself where these are None
            mode=self.mode,
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            name=self.run_dir.name,
            group=config.get("name"),
            tags=self.tags,
            config=config,
            reinit="create_new",  # never ends a run the caller has open
        )

    def log(self, scalars: Mapping[str, float], *, step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self, *, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
