"""mergekit-vision: merge vision foundation models into one backbone by multi-teacher distillation.

The public API (what ``vmerge`` itself calls)::

    import mergekit_vision as mv

    sam = mv.create("teachers", "sam", variant="vit_b", checkpoint="sam_vit_b_01ec64.pth")
    recipe = mv.load_recipe("recipes/sam_clip_tiny.yaml", overrides=["seed=1"])
    result = mv.run_recipe("recipes/sam_clip_tiny.yaml", output="runs/mine")
    scores = mv.evaluate_run("runs/mine")
    run = mv.load_run("runs/mine")            # or an exported safetensors folder
    mv.export_run("runs/mine", format="sam")  # segment_anything's Sam checkpoint

Names are imported on first use, so ``import mergekit_vision`` stays light.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergekit_vision.eval.evaluate import evaluate_run
    from mergekit_vision.export.formats import export_run
    from mergekit_vision.export.loading import LoadedRun, load_run
    from mergekit_vision.recipe.io import dump_recipe, load_recipe, validate_recipe
    from mergekit_vision.recipe.schema import Recipe
    from mergekit_vision.run import RunResult, run_recipe

_LAZY = {
    "load_recipe": "mergekit_vision.recipe.io",
    "validate_recipe": "mergekit_vision.recipe.io",
    "dump_recipe": "mergekit_vision.recipe.io",
    "Recipe": "mergekit_vision.recipe.schema",
    "run_recipe": "mergekit_vision.run",
    "RunResult": "mergekit_vision.run",
    "evaluate_run": "mergekit_vision.eval.evaluate",
    "load_run": "mergekit_vision.export.loading",
    "LoadedRun": "mergekit_vision.export.loading",
    "export_run": "mergekit_vision.export.formats",
}

__all__ = [
    "LoadedRun",
    "Recipe",
    "RunResult",
    "create",
    "dump_recipe",
    "evaluate_run",
    "export_run",
    "load_recipe",
    "load_run",
    "plugin_names",
    "run_recipe",
    "validate_recipe",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mergekit_vision' has no attribute {name!r}")


def plugin_names(kind: str) -> list[str]:
    """The registered plugin names of ``kind`` (``teachers``, ``students``, ``heads``, ...)."""
    return _registry(kind).names()


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build plugin ``name`` of ``kind`` in one call, as a recipe entry would build it.

    Keyword arguments that are fields of the plugin's ``Params`` are validated as its parameters
    (unknown or mistyped ones raise pydantic's error); the rest go to the kind's ``build``
    (``allow_random_init`` for teachers, ``teachers=`` for students, ``student=``/``teachers=``
    for heads, ``batch_sizes=`` for replay, ...). For example::

        teacher = create("teachers", "sam", variant="vit_b", checkpoint="sam_vit_b_01ec64.pth")
        loss = create("losses", "cosine")
    """
    registry = _registry(kind)
    cls, params_model = registry.get(name), registry.params_model(name)
    if not hasattr(cls, "build"):
        raise ValueError(f"{kind} plugins are recipe sections, not built objects")
    fields = set(params_model.model_fields)
    params = params_model.model_validate({k: v for k, v in kwargs.items() if k in fields})
    extra = {k: v for k, v in kwargs.items() if k not in fields}
    accepted = set(inspect.signature(cls.build).parameters) - {"params"}
    unknown = sorted(set(extra) - accepted)
    if unknown:
        raise TypeError(
            f"{kind} plugin {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(sorted(fields)) or '(none)'}; "
            f"its build arguments: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return cls.build(params, **extra)


def _registry(kind: str) -> Any:
    from mergekit_vision.registry import ALL_REGISTRIES

    if kind not in ALL_REGISTRIES:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(ALL_REGISTRIES)}")
    return ALL_REGISTRIES[kind]
