"""Reading recipes: YAML (``safe_load`` only) with line numbers, ``--set`` overrides, and validation
that reports every problem as (dotted path, YAML line, what was expected)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.schema import Recipe, dangling_references
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
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
            value = yaml.safe_load(raw)
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
    lines = lines or {}
    issues: list[Issue] = []
    resolved = _resolve_plugin_params(data, issues)
    refs = dangling_references(resolved)
    issues += [Issue(path, msg) for path, msg in refs]
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(resolved)
    except ValidationError as err:
        # The recipe-level reference check repeats ``refs`` as one message without paths.
        errors = [e for e in err.errors() if e["loc"] or not refs]
        issues += [_issue_from_pydantic(e) for e in errors]
    if issues or recipe is None:
        raise RecipeError(source, [_with_line(i, lines) for i in _dedupe(issues)])
    return recipe


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


def plugin_spec_paths(data: dict[str, Any]) -> list[tuple[str, str, dict]]:
    """(registry kind, dotted path, spec dict) for every plugin spec in raw recipe data."""
    found: list[tuple[str, str, dict]] = []

    def add(kind: str, path: str, spec: Any) -> None:
        if isinstance(spec, dict) and isinstance(spec.get("type"), str):
            found.append((kind, path, spec))

    for name, spec in _items(data.get("teachers")):
        add("teachers", f"teachers.{name}", spec)
    add("students", "student", data.get("student"))
    for name, spec in _items(data.get("heads")):
        add("heads", f"heads.{name}", spec)
    for name, task in _items(data.get("tasks")):
        if isinstance(task, dict):
            add("losses", f"tasks.{name}.loss", task.get("loss"))
            add("datasets", f"tasks.{name}.data", task.get("data"))
            add("datasets", f"tasks.{name}.heldout", task.get("heldout"))
            add("normalization", f"tasks.{name}.normalize", task.get("normalize"))
    for i, stage in enumerate(data.get("stages") or []):
        if isinstance(stage, dict):
            add("replay", f"stages.{i}.replay", stage.get("replay", {"type": "fixed_ratio"}))
            add("conflict", f"stages.{i}.conflict", stage.get("conflict", {"type": "sum"}))
            add("weighting", f"stages.{i}.weighting", stage.get("weighting", {"type": "static"}))
    evaluation = data.get("eval")
    if isinstance(evaluation, dict):
        for role in ("classification", "instances", "semantic"):
            add("datasets", f"eval.{role}", evaluation.get(role))
    return found


def _items(value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, dict) else []


def _resolve_plugin_params(data: dict[str, Any], issues: list[Issue]) -> dict[str, Any]:
    """Validate every plugin's params against its ``Params`` and write back their defaults."""
    import copy

    data = copy.deepcopy(data)
    for kind, path, spec in plugin_spec_paths(data):
        try:
            model = ALL_REGISTRIES[kind].params_model(spec["type"])
        except UnknownPluginError as err:
            issues.append(Issue(f"{path}.type", str(err)))
            continue
        params = spec.get("params") or {}
        try:
            validated = model.model_validate(params)
        except ValidationError as err:
            issues += [_issue_from_pydantic(e, f"{path}.params", model) for e in err.errors()]
            continue
        resolved = {"type": spec["type"], "params": validated.model_dump(mode="json")}
        set_in = data
        keys = path.split(".")
        for key in keys[:-1]:
            set_in = set_in[int(key)] if isinstance(set_in, list) else set_in[key]
        if isinstance(set_in, list):
            set_in[int(keys[-1])] = resolved | {k: v for k, v in spec.items() if k not in resolved}
        else:
            set_in[keys[-1]] = resolved | {k: v for k, v in spec.items() if k not in resolved}
    return data


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
