"""The app contract: an application on top of the engine that owns a recipe section.

An app is registered with ``@APPS.register("name")``; a recipe's top-level ``name:`` section is
then validated against the app's ``Params`` (the toy world's ``toy:`` is the built-in one), and
``vmerge run`` calls the app's :meth:`App.prepare` before it builds anything, so the engine never
knows the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from mergekit_vision.registry import PluginParams, Registry

if TYPE_CHECKING:
    from mergekit_vision.recipe.schema import Recipe


class App:
    """An app owning the recipe section named like it (its registry name)."""

    Params: ClassVar[type[PluginParams]] = PluginParams

    @classmethod
    def prepare(cls, recipe: Recipe, *, progress: bool = True) -> None:
        """Make what ``recipe`` needs of this app (data, teachers) before a run; the recipe has
        this app's section. Runs in one process of a distributed run."""


APPS: Registry[App] = Registry("apps")


def app_section(name: str, value: Any) -> PluginParams | None:
    """App ``name``'s section validated against its ``Params`` (None stays None)."""
    model = APPS.params_model(name)
    return value if value is None or isinstance(value, model) else model.model_validate(value)


def validate_app_sections(data: dict[str, Any]) -> dict[str, PluginParams | None]:
    """Every registered app's section of recipe ``data`` (None where it has none); problems are
    raised at their path in the recipe (``toy.world.x``)."""
    sections: dict[str, PluginParams | None] = {}
    errors: list[InitErrorDetails] = []
    for name in APPS.names():
        try:
            sections[name] = app_section(name, data.get(name))
        except ValidationError as err:
            errors += [
                InitErrorDetails(
                    type=PydanticCustomError(e["type"], e["msg"]),
                    loc=(name, *e["loc"]),
                    input=e["input"],
                )
                for e in err.errors()
            ]
    if errors:
        raise ValidationError.from_exception_data("Recipe", errors)
    return sections


def with_app_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """The recipe's JSON Schema ``schema`` with every registered app's section in it."""
    defs = schema.setdefault("$defs", {})
    for app in APPS:
        section = app.params_model.model_json_schema()
        defs.update(section.pop("$defs", {}), **{app.params_model.__name__: section})
        ref = {"$ref": f"#/$defs/{app.params_model.__name__}"}
        schema["properties"][app.name] = {
            "anyOf": [ref, {"type": "null"}],
            "default": None,
            "description": app.summary,
        }
    schema["additionalProperties"] = False
    return schema
