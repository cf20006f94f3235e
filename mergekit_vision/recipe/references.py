"""Names that plugin params give of a recipe's teachers, heads and tasks.

A ``Params`` field declares that it names one with :class:`~mergekit_vision.registry.RefersTo`
(``teacher: TeacherName``, ``ratios: dict[TaskName, float]``); :func:`declared_references`
finds every such name, so the recipe checks them all without knowing any plugin.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import BaseModel

from mergekit_vision.registry import RefersTo

_MISSING = object()


def declared_references(annotation: Any, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted path, section, name) for every marked name in ``value``.

    ``value`` is data of type ``annotation`` (usually a plugin's ``Params`` model): plain data,
    possibly invalid, or a model instance; ``section`` is ``teachers``, ``heads`` or ``tasks``.
    """
    marker = _marker(annotation)
    if marker is not None:
        yield path, marker.section, value
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        yield from declared_references(args[0], value, path)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None):
                yield from declared_references(arg, value, path)
    elif origin in (list, set, frozenset) and isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            yield from declared_references(args[0], item, f"{path}.{i}")
    elif origin is dict and isinstance(value, Mapping):
        key_marker = _marker(args[0])
        for key, item in value.items():
            if key_marker is not None:
                yield f"{path}.{key}", key_marker.section, key
            yield from declared_references(args[1], item, f"{path}.{key}")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        model = type(value) if isinstance(value, annotation) else annotation
        for name, field in model.model_fields.items():
            item = _field(value, name)
            if item is _MISSING:
                continue
            field_marker = _first_marker(field.metadata)  # pydantic keeps a field's own here
            if field_marker is not None:
                yield f"{path}.{name}", field_marker.section, item
            else:
                yield from declared_references(field.annotation, item, f"{path}.{name}")


def _marker(annotation: Any) -> RefersTo | None:
    if typing.get_origin(annotation) is not Annotated:
        return None
    return _first_marker(annotation.__metadata__)


def _first_marker(metadata: Any) -> RefersTo | None:
    return next((m for m in metadata if isinstance(m, RefersTo)), None)


def _field(value: Any, name: str) -> Any:
    if isinstance(value, BaseModel):
        return getattr(value, name, _MISSING)
    if isinstance(value, Mapping):
        return value.get(name, _MISSING)
    return _MISSING
