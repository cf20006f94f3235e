"""MLflow runs, in a file store inside the run folder unless ``MLFLOW_TRACKING_URI`` is set."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from mergekit_vision.registry import PluginParams
from mergekit_vision.trackers.base import TRACKERS, Tracker, flat_config

# MLflow's limits on one log_batch request, and on a param's value.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARAM_LENGTH = 6000


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """MLflow: scalars as metrics, the recipe as params and an artifact; a file store in the run.

    The tracking URI is ``MLFLOW_TRACKING_URI`` when set (a server or database), else the file
    store ``file:<run>/mlruns`` (``mlflow ui --backend-store-uri <run>/mlruns`` shows it; recent
    MLflow calls file stores deprecated, so vmerge opts in for this one). The experiment is
    ``params.experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else the recipe's name; the MLflow run
    is named after the run folder. A resumed run is a new MLflow run that starts at the step
    after the checkpoint.
    """

    library = "mlflow"
    extra = "mlflow"

    class Params(PluginParams):
        experiment: str | None = Field(
            None, description="default: MLFLOW_EXPERIMENT_NAME, else the recipe's name"
        )

    def __init__(self, *, run_dir: Path, experiment: str | None = None):
        super().__init__(run_dir=run_dir)
        self.experiment = experiment

    def start(self, *, config: dict[str, Any], recipe_yaml: str, from_step: int) -> None:
        from mlflow.entities import Param

        self.client = self._client()
        name = (
            self.experiment
            or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or str(config.get("name", "mergekit-vision"))
        )
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name)
        self.run_id = run.info.run_id
        params = [Param(_key(k), str(v)[:PARAM_LENGTH]) for k, v in flat_config(config).items()]
        for chunk in _chunks(params, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        self.client.log_text(self.run_id, recipe_yaml, "recipe.resolved.yaml")

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return MlflowClient(tracking_uri=uri)
        with _file_store_allowed():  # the client keeps the store it builds here
            return MlflowClient(tracking_uri=(self.run_dir / "mlruns").resolve().as_uri())

    def log(self, scalars: Mapping[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in scalars.items()]
        for chunk in _chunks(metrics, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def close(self, *, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set; set it only while
    the client builds its store, and only where the user has not decided."""
    if "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _key(key: str) -> str:
    """``key`` with the characters MLflow refuses in names (a task named ``a+b``) as ``_``;
    colons too, which Windows stores refuse."""
    return re.sub(r"[^\w./\- ]", "_", key)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
