"""A recipe's plugin entries: ``type`` names a registered plugin, ``params`` holds its ``Params``.

Each kind of plugin has its entry class (``TeacherSpec``, ``ReplaySpec``, ...) naming its registry.
Validating an entry resolves plain ``params`` through that registry, so a validated recipe holds
every plugin's typed ``Params`` and nothing downstream validates them again. The registry is
consulted while validating, never on import: importing the schema loads no plugin.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from mergekit_vision.registry import ALL_REGISTRIES, PluginParams, UnknownPluginError


class Frozen(BaseModel):
    # inf and nan pass range checks like ``gt=0`` yet no field of a recipe means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class InvalidParams(PluginParams):
    """Stands in for params a loader has already reported as invalid, so that the rest of the
    recipe still validates and every problem is listed at once; never in a valid recipe."""


# Any plugin's params: their schema depends on ``type``, which a JSON Schema cannot follow here.
_ANY_PARAMS = WithJsonSchema(
    {"type": "object", "title": "Params", "description": "see vmerge plugins"}
)


class PluginSpec(Frozen):
    """``type`` names a plugin of the registry ``kind``; ``params`` holds its validated ``Params``.

    ``params`` may be given as a mapping (validated against the plugin's ``Params`` here) or as
    that ``Params`` instance (kept). Dumps write every parameter, defaults included.
    """

    kind: ClassVar[str] = ""
    type: str
    params: Annotated[SerializeAsAny[PluginParams], _ANY_PARAMS] = Field(
        default_factory=PluginParams
    )

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if isinstance(data, PluginSpec) and not isinstance(data, cls):
            return {"type": data.type, "params": data.params}  # re-typed for this kind
        if not isinstance(data, dict | PluginSpec):
            # One name for every kind in messages (``vmerge validate`` has always said this).
            raise PydanticCustomError(
                "model_type", "Input should be a valid dictionary or instance of PluginSpec"
            )
        return data

    @field_validator("params", mode="before")
    @classmethod
    def _typed_params(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, InvalidParams):
            return value
        if not isinstance(value, dict | PluginParams):
            raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
        name = info.data.get("type")
        if name is None:  # ``type`` itself is invalid and reported
            return InvalidParams()
        if not cls.kind:
            return PluginParams.model_validate(value)
        try:
            model = ALL_REGISTRIES[cls.kind].params_model(name)
        except UnknownPluginError as err:
            raise ValueError(str(err)) from None
        if isinstance(value, model):
            return value
        return model.model_validate(value if isinstance(value, dict) else value.model_dump())


class TeacherSpec(PluginSpec):
    kind = "teachers"


class LoraSpec(Frozen):
    """Low-rank adapters on the student's blocks (LoRA: Hu et al., ICLR 2022, arXiv 2106.09685):
    each target Linear's weight ``W`` is frozen and trains as ``W + (alpha / rank) B A``, with
    ``B`` starting at zero; export merges ``B A`` back into ``W``. SAM-CLIP (Wang et al., arXiv
    2310.15308) suggests such parameter-efficient training against the drop in what the
    backbone retains of its first teacher."""

    rank: int = Field(4, ge=1, le=4096, description="the rank of each update B A")
    alpha: float = Field(8.0, gt=0, description="the update's scale is alpha / rank")
    targets: list[str] = Field(
        default_factory=lambda: ["qkv", "proj"],
        min_length=1,
        description="the Linear layers of every block to adapt, by the last part of their "
        "module name (vitdet: qkv, proj, lin1, lin2; timm_vit: qkv, proj, fc1, fc2)",
    )


class StudentSpec(PluginSpec):
    kind = "students"
    lora: LoraSpec | None = Field(
        None, description="train low-rank adapters on the blocks instead of their weights"
    )


class HeadSpec(PluginSpec):
    kind = "heads"


class LossSpec(PluginSpec):
    kind = "losses"


class DatasetSpec(PluginSpec):
    kind = "datasets"


class NormalizationSpec(PluginSpec):
    kind = "normalization"


class UpsamplingSpec(PluginSpec):
    kind = "upsampling"


class ReplaySpec(PluginSpec):
    kind = "replay"


class ConflictSpec(PluginSpec):
    kind = "conflict"


class WeightingSpec(PluginSpec):
    kind = "weighting"


class TrackerSpec(PluginSpec):
    """An experiment tracker; a bare name (``tensorboard``) stands for it with default params."""

    kind = "trackers"

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        try:
            ALL_REGISTRIES[cls.kind].entry(data)
        except UnknownPluginError as err:
            raise PydanticCustomError(
                "unknown_plugin", "{message}", {"message": str(err)}
            ) from None
        return {"type": data, "params": {}}  # params given: validated, defaults filled in

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        entry = handler(core_schema)
        return {"anyOf": [{"type": "string", "description": "a tracker's name"}, entry]}


def plugin_specs(
    model: type[BaseModel], data: Any, prefix: str = ""
) -> Iterator[tuple[type[PluginSpec], str, dict[str, Any]]]:
    """(entry class, dotted path, entry) of every plugin entry with a ``type`` in ``data``.

    ``data`` is plain (possibly invalid) data of ``model``; the entries are found through the
    schema's annotations, in field order, so a new plugin field needs no list kept elsewhere.
    """
    if not isinstance(data, dict):
        return
    for name, field in model.model_fields.items():
        if name in data:
            yield from _specs_in(field.annotation, data[name], f"{prefix}{name}")


def _specs_in(
    annotation: Any, value: Any, path: str
) -> Iterator[tuple[type[PluginSpec], str, dict[str, Any]]]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        yield from _specs_in(args[0], value, path)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _specs_in(arg, value, path)
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            yield from _specs_in(args[1], item, f"{path}.{key}")
    elif origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _specs_in(args[0], item, f"{path}.{i}")
    elif isinstance(annotation, type) and issubclass(annotation, PluginSpec):
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            yield annotation, path, value
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from plugin_specs(annotation, value, f"{path}.")
