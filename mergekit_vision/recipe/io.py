"""Reading recipes: YAML (``safe_load`` only) with line numbers, ``--set`` overrides, and validation
that reports every problem as (dotted path, YAML line, what was expected)."""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.app import APPS, app_section
from mergekit_vision.recipe.safe_yaml import (
    RecipeTextError,
    compose_and_load,
    load_value,
    read_text,
)
from mergekit_vision.recipe.schema import Recipe, dangling_references, unknown_key_message
from mergekit_vision.recipe.specs import InvalidParams, plugin_specs
from mergekit_vision.registry import ALL_REGISTRIES, UnknownPluginError


def _node_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            out[path] = key.start_mark.line + 1
            _node_lines(value, path, out) if not _is_leaf(value) else None
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _node_lines(value, (*prefix, str(i)), out)


def _is_leaf(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The YAML document and a map from key paths to their line numbers."""
    try:
        root, data = compose_and_load(read_text(path))
    except OSError as err:
        problem = f"cannot read the file ({err.strerror}); give the path to a readable recipe YAML"
        raise RecipeError(str(path), [Issue("", problem)]) from None
    except RecipeTextError as err:
        raise RecipeError(str(path), [Issue("", err.message, err.line)]) from None
    except yaml.YAMLError as err:
        raise RecipeError(str(path), [Issue("", f"not valid YAML: {err}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), [Issue("", "the recipe must be a YAML mapping")])
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _node_lines(root, (), lines)
    return data, lines


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError("--set", [Issue(item, "expected dotted.key=value")])
        dotted, raw = item.split("=", 1)
        try:
            value = load_value(raw)
        except RecipeTextError as err:
            raise RecipeError("--set", [Issue(item, err.message)]) from None
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            hint = "quote the value, e.g. --set 'a.b=[1, 2]' or --set 'a.b={x: 1}'"
            raise RecipeError(
                "--set", [Issue(item, f"value is not YAML ({problem}); {hint}")]
            ) from None
        set_dotted(data, dotted.strip(), value)
    return data


def set_dotted(data: Any, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError("--set", [Issue(dotted, f"{key!r} is not an index of a list")])
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            where = ".".join(keys[:depth])
            raise RecipeError("--set", [Issue(dotted, f"{where} is a value, not a mapping")])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [Issue("", "file not found; give the path to a recipe YAML")])
    data, lines = read_yaml(path)
    return validate_recipe(apply_overrides(data, overrides or []), source=str(path), lines=lines)


def validate_recipe(
    data: dict[str, Any], *, source: str = "<recipe>", lines: dict | None = None
) -> Recipe:
    """The typed recipe of plain ``data``; raise :class:`RecipeError` listing every problem.

    Plugin params and app sections are validated first, each against its own ``Params`` (so a
    problem names its path and the keys valid there), then the references, then the rest.
    """
    lines = lines or {}
    issues: list[Issue] = []
    resolved, invalid = _resolve_plugin_params(data, issues)
    section_issues: list[Issue] = []
    unknown = _resolve_app_sections(resolved, section_issues)
    refs = dangling_references(resolved)
    issues += [Issue(path, msg) for path, msg in refs]
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(_checkable(resolved, invalid, unknown))
    except ValidationError as err:
        # The recipe-level reference check repeats ``refs`` as one message without paths.
        errors = [e for e in err.errors() if e["loc"] or not refs]
        issues += [_issue_from_pydantic(e) for e in errors]
    issues += section_issues + [Issue(str(key), unknown_key_message(key)) for key in unknown]
    reported = {issue.path for issue in issues}
    issues += [i for i in _unusable_numbers(data) if i.path not in reported]
    if issues or recipe is None:
        raise RecipeError(source, [_with_line(i, lines) for i in _dedupe(issues)])
    return recipe


def _unusable_numbers(data: Any, path: str = "") -> list[Issue]:
    """Numbers no code can take, wherever they are (plugin params declare no range for most):
    integers beyond 64 bits overflow torch and numpy, inf and nan pass checks like ``> 0``."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        items = ()
    issues = [i for key, value in items for i in _unusable_numbers(value, _join(path, key))]
    if isinstance(data, int) and not isinstance(data, bool) and not -(2**63) <= data < 2**63:
        issues.append(Issue(path, f"{data} is out of range: numbers in a recipe fit in 64 bits"))
    elif isinstance(data, float) and not math.isfinite(data):
        issues.append(Issue(path, f"{data} is not a finite number; give a finite value"))
    return issues


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _with_line(issue: Issue, lines: dict[tuple[str, ...], int]) -> Issue:
    parts = tuple(p for p in issue.path.split(".") if p)
    while parts and parts not in lines:
        parts = parts[:-1]
    return Issue(issue.path, issue.message, lines.get(parts))


def _dedupe(issues: list[Issue]) -> list[Issue]:
    seen, out = set(), []
    for issue in issues:
        if (issue.path, issue.message) not in seen:
            seen.add((issue.path, issue.message))
            out.append(issue)
    return out


def _resolve_plugin_params(
    data: dict[str, Any], issues: list[Issue]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A copy of ``data`` whose plugin entries hold their validated ``Params``, and the entries
    whose params are invalid (left as given, their problems added to ``issues``)."""
    import copy

    data = copy.deepcopy(data)
    invalid: list[dict[str, Any]] = []
    for spec_cls, path, spec in list(plugin_specs(Recipe, data)):
        try:
            model = ALL_REGISTRIES[spec_cls.kind].params_model(spec["type"])
        except UnknownPluginError as err:
            issues.append(Issue(f"{path}.type", str(err)))
            invalid.append(spec)
            continue
        try:
            spec["params"] = model.model_validate(spec.get("params") or {})
        except ValidationError as err:
            issues += [_issue_from_pydantic(e, f"{path}.params", model) for e in err.errors()]
            invalid.append(spec)
        except Exception as err:  # noqa: BLE001 - a plugin's own check failed on odd values
            issues.append(Issue(f"{path}.params", _check_failed(spec_cls.kind, spec["type"], err)))
            invalid.append(spec)
    return data, invalid


def _resolve_app_sections(data: dict[str, Any], issues: list[Issue]) -> list[Any]:
    """Validate each app section of ``data`` in place (left as given where invalid, its problems
    added to ``issues``); return the top-level keys that are neither fields nor apps."""
    unknown = []
    for key, value in data.items():
        if key in Recipe.model_fields:
            continue
        if key not in APPS:
            unknown.append(key)
            continue
        try:
            data[key] = app_section(key, value)
        except ValidationError as err:
            model = APPS.params_model(key)
            issues += [_issue_from_pydantic(e, key, model) for e in err.errors()]
        except Exception as err:  # noqa: BLE001 - the app's own check failed on odd values
            issues.append(Issue(key, _check_failed("apps", key, err)))
    return unknown


def _check_failed(kind: str, name: str, err: Exception) -> str:
    """What to say where a plugin's ``Params`` check raised instead of reporting a problem
    (pydantic turns only ``ValueError`` and ``AssertionError`` into one)."""
    return (
        f"the {kind} plugin {name!r} failed to check these values ({type(err).__name__}: {err}); "
        "one of them is outside what it handles: correct it, and tell the plugin's authors"
    )


def _checkable(
    data: dict[str, Any], invalid: list[dict[str, Any]], unknown: list[Any]
) -> dict[str, Any]:
    """``data`` as the schema may check it for the remaining problems: invalid params (already
    reported) stand in as :class:`InvalidParams`, invalid app sections and unknown keys go."""
    out = {k: v for k, v in data.items() if k not in unknown}
    # The entries themselves, not their dotted paths: a name may hold a dot or be a number.
    for spec in invalid:
        if isinstance(spec.get("params", {}), dict):  # other types: the schema says so itself
            spec["params"] = InvalidParams()
    for key in list(out):
        if key not in Recipe.model_fields and not isinstance(out[key], APPS.params_model(key)):
            out[key] = None
    return out


def _issue_from_pydantic(
    error: dict[str, Any], prefix: str = "", model: type[BaseModel] = Recipe
) -> Issue:
    loc = [str(p) for p in error["loc"]]
    path = ".".join([prefix, *loc] if prefix else loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return Issue(path, f"unknown key {loc[-1]!r}{hint}")
    if kind == "missing":
        return Issue(path, "required field is missing")
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return Issue(path, f"{error['msg']}{shown}")


def _valid_keys(model: Any, loc: list[str]) -> list[str]:
    """Field names of the model found by walking ``loc`` through ``model``'s annotations."""
    node: Any = model
    for part in loc:
        node = _step(node, part)
        if node is None:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _step(node: Any, part: str) -> Any:
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(part)
        return _unwrap(field.annotation) if field else None
    origin = typing.get_origin(node)
    args = typing.get_args(node)
    if origin is dict and len(args) == 2:
        return _unwrap(args[1])
    if origin is list and args:
        return _unwrap(args[0])
    return None


def _unwrap(annotation: Any) -> Any:
    """The model inside ``X | None`` (or the annotation itself)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and all(isinstance(a, type) for a in args):
        models = [a for a in args if issubclass(a, BaseModel)]
        return models[0] if models else annotation
    return annotation


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what runs and checkpoints save beside themselves)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, width=100)
