"""The errors a user meets: a recipe's problems (each with its dotted path and YAML line) and a
component that cannot be built from its recipe field. The CLI prints them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issue:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path or '<recipe>'}{where}: {self.message}"


class BuildError(ValueError):
    """A component could not be built from the recipe; names the recipe field at fault."""

    def __init__(self, where: str, err: Exception):
        self.where = where
        super().__init__(f"{where}: {err}")


class RecipeError(ValueError):
    """A recipe that cannot be used; ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: list[Issue]):
        self.source, self.issues = source, issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s) in the recipe:\n{lines}")


class NonFiniteError(RuntimeError):
    """Training diverged: too many consecutive non-finite losses, or non-finite weights about to
    be checkpointed. The message names the task, the step and what to try."""


class WeightsFileError(ValueError):
    """A checkpoint, training state or weights file that cannot be used.

    The message reads ``"{problem}. Expected {expected}. To fix: {remedy}."``; ``problem`` names
    the file and says what is wrong with it.
    """

    def __init__(self, path: Path, *, problem: str, expected: str, remedy: str):
        self.path, self.problem, self.expected, self.remedy = Path(path), problem, expected, remedy
        super().__init__(f"{problem}. Expected {expected}. To fix: {remedy}.")


class WeightsNotFoundError(FileNotFoundError):
    """Weights named by a hub name or tag that cannot be had: not in the local cache while
    downloads are off or the Hub cannot be reached, or not where the name points.

    ``where`` is the params field (``params.pretrained``) or, when known, the recipe field
    (``teachers.clip.params.pretrained``); ``detail`` says what is wrong, with the name and the
    cache folder, and what to do. The message reads ``"{where}: {detail}"``.
    """

    def __init__(self, where: str, detail: str):
        self.where, self.detail = where, detail
        super().__init__(f"{where}: {detail}")
