"""The experiment-tracker contract: where a run's numbers go besides ``metrics.jsonl``.

A tracker is handed exactly what the run folder writes: the resolved recipe when the run
starts, every ``metrics.jsonl`` line's numbers at that line's step, and, when ``vmerge run``
evaluates, the merged model's results at the last step. Its library is an optional extra of
mergekit-vision: building a tracker only checks that the library is installed (so a missing one
stops the run before any model is built), starting it imports the library.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

from mergekit_vision.registry import PluginParams, Registry


class TrackerLibraryMissing(ImportError):
    """A recipe names a tracker whose library is not installed; says which extra installs it."""


class Tracker(ABC):
    """Base of every tracker plugin; rank 0 of a run drives one through its
    :class:`~mergekit_vision.trackers.group.TrackerGroup`.

    Calls, in order: :meth:`start` once the run folder is decided (fresh or resumed), then
    :meth:`log` for every metrics line (and once for the final evaluation), then :meth:`close`.
    Step numbers are the run's global steps, the ``step`` of ``metrics.jsonl``; a resumed run
    starts again at the step after its last checkpoint.

    Args:
        run_dir: the run folder; a tracker that writes files keeps them inside it by default.
        Subclasses take their ``Params`` fields as further keyword arguments.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    library: ClassVar[str] = ""  # the module the tracker imports
    extra: ClassVar[str] = ""  # the extra of mergekit-vision that installs it

    def __init__(self, *, run_dir: Path):
        self.run_dir = run_dir

    @classmethod
    def build(cls, params: PluginParams, *, run_dir: Path) -> Tracker:
        """The tracker, once its library is known to be installed; nothing is written yet."""
        if cls.library and find_spec(cls.library) is None:
            name = getattr(cls, "registry_name", cls.__name__)
            raise TrackerLibraryMissing(
                f"the {name} tracker needs {cls.library}, which is not installed: "
                f"pip install 'mergekit-vision[{cls.extra}]' (or drop {name} from "
                "logging.trackers)"
            )
        return cls(run_dir=run_dir, **params.model_dump())

    @abstractmethod
    def start(self, *, config: dict[str, Any], recipe_yaml: str, from_step: int) -> None:
        """Open the tracker's run and record the resolved recipe (``config`` is its data,
        ``recipe_yaml`` its text). Training continues after ``from_step``: 0 on a fresh run, the
        checkpoint's step on a resumed one, so every step logged is greater."""

    @abstractmethod
    def log(self, scalars: Mapping[str, float], *, step: int) -> None:
        """Record ``scalars`` (finite numbers, keyed as in ``metrics.jsonl``) at ``step``."""

    @abstractmethod
    def close(self, *, failed: bool) -> None:
        """Write out what is pending and end the tracker's run (marked failed when training
        raised)."""


TRACKERS: Registry[Tracker] = Registry("trackers")


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float]:
    """``config`` as dotted keys of plain values, for trackers whose hyperparameters are flat
    (TensorBoard's HParams, MLflow's params): lists and nulls become their JSON text."""
    flat: dict[str, str | int | float] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, prefix=f"{dotted}."))
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            flat[dotted] = value
        else:  # bools too: every tracker shows "true" the way the recipe reads
            flat[dotted] = json.dumps(value)
    return flat
