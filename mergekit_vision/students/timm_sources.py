"""Where a timm student's backbone weights come from, shared by the timm students.

The ``timm_vit`` and ``timm_features`` students start their timm backbone the same ways: from
random weights, from a ``timm`` teacher of the same ``model`` (``init_from``: the teacher's
``"model"`` component), from a local timm ``checkpoint`` file, or from timm's ``pretrained``
weights (a tag of ``model`` or ``hf-hub:org/name``), at most one of them. Each student loads the
weights into its backbone its own way (its ``load`` callable); this module only finds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mergekit_vision.contracts import Teacher, recipe_teacher
from mergekit_vision.hub import WeightsName, cached, resolve
from mergekit_vision.teachers.timm import pretrained_stats, timm_weights
from mergekit_vision.weights import read_weights


class TimmSourceParams(Protocol):
    """The params fields that name a timm student's weights."""

    @property
    def model(self) -> str: ...
    @property
    def init_from(self) -> str | None: ...
    @property
    def checkpoint(self) -> Path | None: ...
    @property
    def pretrained(self) -> str | None: ...


class LoadWeights(Protocol):
    """A student's loader of timm weights into its backbone."""

    def __call__(self, checkpoint: Mapping[str, Any], *, source_name: str) -> None: ...


class TimmWeightSources:
    """Mixin of a student whose params are :class:`TimmSourceParams`: the files it reads and the
    weights it names by tag (what ``vmerge fetch`` downloads)."""

    @classmethod
    def checkpoint_fields(cls, params: TimmSourceParams) -> dict[str, Path | None]:
        """Recipe fields that name files this student reads (a name: its cached file)."""
        if params.pretrained is not None:
            return {"pretrained": cached(cls.weight_names(params)["pretrained"])}
        return {"checkpoint": params.checkpoint}

    @classmethod
    def weight_names(cls, params: TimmSourceParams) -> dict[str, WeightsName]:
        if params.pretrained is None:
            return {}
        return {"pretrained": timm_weights(params.model, params.pretrained)}


def weights_file(
    params: TimmSourceParams, data: Mapping[str, Any]
) -> tuple[Path | None, dict[str, Any]]:
    """The weights file to load (the ``checkpoint``, or the ``pretrained`` weights' file, fetched
    if need be; None for neither) and the data config ``data`` with the pretrained weights' own
    input statistics, when they have them."""
    if params.pretrained is None:
        return params.checkpoint, dict(data)
    weights = resolve(timm_weights(params.model, params.pretrained))
    return weights, {**data, **pretrained_stats(params.model, params.pretrained, weights)}


def load_sources(
    params: TimmSourceParams,
    weights: Path | None,
    *,
    teachers: dict[str, Teacher],
    load: LoadWeights,
    kind: str,
) -> None:
    """Load the ``init_from`` teacher's ``"model"`` weights, then the ``weights`` file, through
    ``load``; ``kind`` (the student's registry name) opens the error of an unknown teacher."""
    if params.init_from is not None:
        teacher = recipe_teacher(teachers, params.init_from, field=f"{kind} init_from")
        source = teacher.component("model").state_dict()
        load(source, source_name=f"teacher {params.init_from!r}")
    if weights is not None:
        raw = read_weights(weights, what="student checkpoint")
        load(raw, source_name=str(weights))
