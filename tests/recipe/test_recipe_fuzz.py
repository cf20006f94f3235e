"""Randomly broken recipes: ``vmerge validate`` answers each with exit 2 (or 0 when the mutation
happens to be valid) and a problem list, never a traceback.

Each case starts from a recipe of the repository, applies 1-3 seeded mutations (a value's type
swapped, a key dropped, added, renamed or made a number, a number out of range, a mapping turned
into a list or nested one level deeper, a list emptied, one of these given as ``--set`` instead,
the text cut or given a stray byte) and runs ``vmerge validate`` in-process. A failure names the
seed and the mutations (``mutated_recipe(source, seed)`` rebuilds the case);
``RECIPE_FUZZ_SEED=N`` runs another set of cases.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("recipes/*.yaml"), *ROOT.glob("tests/recipes/*.yaml")])
BASE_SEED = int(os.environ.get("RECIPE_FUZZ_SEED", "0"))
CASES_PER_SOURCE = 50

REPLACEMENTS: list[Any] = [
    7,
    -5,
    0,
    0.5,
    -1e-9,
    2**70,
    -(2**70),
    10**400,
    1e308,
    float("inf"),
    float("nan"),
    None,
    True,
    False,
    "",
    "text",
    "a.b",
    [],
    [1, 2],
    ["x"],
    {},
    {"x": 1},
    {"type": "nope"},
    [{"x": 1}],
]


KEYS: list[Any] = [3, 0.5, None, True, "", "a.b", "0", "type", "params", "backbone"]


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``data`` (keys and list indices), the root included."""
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: Any, path: tuple, value: Any) -> Any:
    """``data`` with the value at ``path`` replaced (the root itself when ``path`` is empty)."""
    if not path:
        return value
    _get(data, path[:-1])[path[-1]] = value
    return data


def _mutate_value(rng: random.Random, value: Any) -> tuple[Any, str]:
    """A changed ``value`` and what was done to it."""
    kind = rng.choice(["swap", "swap", "out_of_range", "restructure", "nest"])
    if kind == "out_of_range" and isinstance(value, int | float) and not isinstance(value, bool):
        new = rng.choice([-value - 1, 0, value * 10**20, -(2**63), 2**63, value + 0.5])
        return new, f"out of range {value!r} -> {new!r}"
    if kind == "restructure" and isinstance(value, dict):
        new = rng.choice([list(value.values()), list(value), [value], {}])
        return new, f"mapping restructured -> {type(new).__name__} of {len(new)}"
    if kind == "restructure" and isinstance(value, list):
        new = rng.choice([[], {str(i): v for i, v in enumerate(value)}, value * 2, value[:1]])
        return new, f"list restructured -> {type(new).__name__} of {len(new)}"
    if kind == "nest":
        new = rng.choice([[value], {"x": value}, {"params": value}])
        return new, f"nested one level deeper in a {type(new).__name__}"
    new = rng.choice(REPLACEMENTS)
    return new, f"replaced by {new!r}"


def _mutate_data(rng: random.Random, data: Any) -> tuple[Any, str]:
    path = rng.choice(_paths(data))
    where = ".".join(map(str, path)) or "<root>"
    target = _get(data, path)
    kind = rng.choice(["value", "value", "value", "drop", "add", "rename", "key"])
    if kind == "drop" and path:
        parent = _get(data, path[:-1])
        del parent[path[-1]]
        return data, f"{where}: dropped"
    if kind == "add" and isinstance(target, dict):
        key = rng.choice(["typo", "params", "type", "steps", 3, None])
        target[key] = rng.choice(REPLACEMENTS)
        return data, f"{where}: unknown key {key!r} added"
    if kind == "rename" and path and isinstance(path[-1], str):
        parent = _get(data, path[:-1])
        parent[path[-1] + "_"] = parent.pop(path[-1])
        return data, f"{where}: key renamed to {path[-1]}_"
    if kind == "key" and path and isinstance(_get(data, path[:-1]), dict):
        key = rng.choice(KEYS)
        parent = _get(data, path[:-1])
        parent[key] = parent.pop(path[-1])
        return data, f"{where}: key replaced by {key!r}"
    new, what = _mutate_value(rng, target)
    return _set(data, path, new), f"{where}: {what}"


def _mutate_text(rng: random.Random, text: str) -> tuple[bytes, str]:
    raw = text.encode()
    at = rng.randrange(len(raw) + 1)
    kind = rng.choice(["cut", "byte", "indent"])
    if kind == "cut":
        return raw[:at], f"text cut at byte {at}"
    if kind == "byte":
        byte = bytes([rng.choice([0x00, 0x09, 0x80, 0xE9, 0xFF, ord(":"), ord("["), ord("&")])])
        return raw[:at] + byte + raw[at:], f"byte {byte!r} inserted at {at}"
    return raw[:at] + b"\n   " + raw[at:], f"newline and indent inserted at byte {at}"


def _override(rng: random.Random, data: Any) -> str:
    """A ``--set`` argument for a random path of ``data``, its value a random replacement."""
    path = rng.choice(_paths(data)[1:] or [("name",)])
    value, _ = _mutate_value(rng, _get(data, path))
    dotted = ".".join(map(str, path))
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n")
    return f"{dotted}={text.strip()}"


def mutated_recipe(source: Path, seed: int) -> tuple[bytes, list[str], list[str]]:
    """The bytes of a broken copy of ``source``, ``--set`` arguments, and the mutations applied,
    all drawn from ``seed``."""
    rng = random.Random(seed)
    data = yaml.safe_load(source.read_text())
    mutations, overrides = [], []
    for _ in range(rng.choice([1, 1, 2, 3])):
        if isinstance(data, dict) and rng.random() < 0.15:
            overrides += ["--set", _override(rng, data)]
            mutations.append(f"{overrides[-2]} {overrides[-1]!r}")
            continue
        data, what = _mutate_data(rng, data)
        mutations.append(what)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if rng.random() < 0.15:
        raw, what = _mutate_text(rng, text)
        return raw, overrides, [*mutations, what]
    return text.encode(), overrides, mutations


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_mutated_recipes_exit_2_without_traceback(source, tmp_path, capsys):
    failures = []
    for case in range(CASES_PER_SOURCE):
        seed = BASE_SEED * 1_000_003 + case
        raw, overrides, mutations = mutated_recipe(source, seed)
        path = tmp_path / f"case{case}.yaml"
        path.write_bytes(raw)
        try:
            code = main(["validate", str(path), *overrides])
        except BaseException as err:  # noqa: BLE001 - any escape is what this test looks for
            code = f"{type(err).__name__}: {err}"[:300]
        captured = capsys.readouterr()
        if code not in (0, 2) or "Traceback" in captured.out + captured.err:
            failures.append(f"seed {seed} ({source.name}; {'; '.join(mutations)}): got {code}")
    assert not failures, "\n".join(failures)
