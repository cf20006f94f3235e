"""The toy world as an app: it owns a recipe's ``toy:`` section and prepares its data and teachers
before a run (see :mod:`mergekit_vision.toy.prepare`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergekit_vision.recipe.app import APPS, App
from mergekit_vision.toy.prepare import prepare_toy
from mergekit_vision.toy.spec import ToySpec

if TYPE_CHECKING:
    from mergekit_vision.recipe.schema import Recipe


@APPS.register("toy")
class ToyApp(App):
    """The toy world: CPU-sized data and teachers for trying the merge without downloads."""

    Params = ToySpec

    @classmethod
    def prepare(cls, recipe: Recipe, *, progress: bool = True) -> None:
        prepare_toy(recipe, progress=progress)
