"""What every ``vmerge`` command shares: the consoles, the recipe arguments, and turning user
mistakes into a clear message with exit code 2 instead of a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from mergekit_vision.errors import (
    BuildError,
    Issue,
    NonFiniteError,
    RecipeError,
    WeightsFileError,
)
from mergekit_vision.export import ExportError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.registry import UnknownPluginError

console = Console()
errors = Console(stderr=True)

USER_ERRORS = (
    RecipeError,
    BuildError,
    UnknownPluginError,
    FileExistsError,
    FileNotFoundError,
    ExportError,
    NonFiniteError,
    WeightsFileError,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value: dotted.key=value (YAML value)."),
]
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]


def user_error(err: Exception) -> None:
    # escaped: a message may hold brackets (pip install 'mergekit-vision[wandb]')
    errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def guarded(fn: Callable[..., Any]) -> Any:
    """Run a command body; user mistakes become a clear message and exit code 2, not a trace."""
    try:
        return fn()
    except USER_ERRORS as err:
        user_error(err)


def load_toy_recipe(recipe: Path, overrides: list[str] | None, *, missing: str) -> Any:
    """The resolved recipe of a ``vmerge toy`` command; without a ``toy`` section it is a
    recipe error whose message is ``missing``."""
    resolved = load_recipe(recipe, overrides)
    if resolved.toy is None:
        raise RecipeError(str(recipe), [Issue("toy", missing)])
    return resolved
