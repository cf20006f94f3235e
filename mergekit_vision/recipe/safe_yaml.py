"""Recipe text read safely: UTF-8 only, ``safe_load`` types only, and bounds that refuse a
document while it is composed, before anything expands it.

YAML aliases (``*name`` repeats what ``&name`` holds) let a few hundred bytes stand for billions
of values (the "billion laughs" document): the composer shares one node per anchor, but every
reader after it (line numbers, copies, validation) walks the expanded tree. So the loader counts
each node's expanded size as it composes and stops at :data:`MAX_VALUES`; aliases that stay within
it (a data spec shared by two tasks) keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 16 * 2**20  # recipes are a few KB; this catches a data file given by mistake
MAX_VALUES = 100_000  # a recipe holds a few hundred keys, list items and scalars
MAX_DEPTH = 64  # a recipe nests about five levels; thousands would exhaust Python's stack
MAX_INT_DIGITS = 4_300  # Python's own limit on decimal integer text (sys.int_info)


class RecipeTextError(yaml.YAMLError):
    """Recipe text refused (not UTF-8, or past a bound); ``line`` is the 1-based line where."""

    def __init__(self, message: str, mark: yaml.Mark | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else line


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, a document whose expanded size passes
    :data:`MAX_VALUES`, which nests deeper than :data:`MAX_DEPTH`, or whose alias contains
    itself."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self._aliases += 1
            if id(node) not in self._sizes:  # its anchor's node is still being composed
                raise RecipeTextError(
                    f"the alias *{event.anchor} is inside the value its anchor "
                    f"&{event.anchor} names, so it would repeat forever; write the value out",
                    event.start_mark,
                )
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RecipeTextError(
                f"values nest more than {MAX_DEPTH} levels deep here; a recipe is a few levels "
                "of mappings and lists",
                mark,
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        size = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if size > MAX_VALUES:
            raise RecipeTextError(self._too_large(), mark)
        self._sizes[id(node)] = size
        return node

    def _too_large(self) -> str:
        if not self._aliases:
            return f"the recipe holds more than {MAX_VALUES:,} values; a recipe holds hundreds"
        return (
            f"this value expands to more than {MAX_VALUES:,} values through YAML aliases "
            "(each *name repeats all that &name holds, aliases inside included); write the "
            "repeated parts out or repeat them less"
        )

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_INT_DIGITS:  # int() would refuse it with a ValueError
            raise RecipeTextError(
                f"an integer of {digits} digits; numbers in a recipe fit in 64 bits",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_yaml_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def compose_and_load(text: str) -> tuple[yaml.Node | None, Any]:
    """The composed root node of ``text`` (None if empty) and its data, every alias expanded
    into its own copy (so changing one place of the data never changes another).

    Raises :class:`yaml.YAMLError` (a :class:`RecipeTextError` for a refused document).
    """
    loader = RecipeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return root, _unshared(data)


def load_value(text: str) -> Any:
    """One YAML value (a ``--set`` value), under the same bounds as a recipe."""
    return compose_and_load(text)[1]


def _unshared(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _unshared(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_unshared(item) for item in data]
    return data


def read_text(path: Path) -> str:
    """The text of recipe file ``path``; raises :class:`RecipeTextError` where the file is too
    large or not UTF-8, ``OSError`` where it cannot be read."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise RecipeTextError(
            f"the file holds {size / 2**20:.0f} MiB; a recipe is a small YAML text file "
            f"(at most {MAX_BYTES // 2**20} MiB): check the path"
        )
    return decode_utf8(path.read_bytes())


def decode_utf8(raw: bytes) -> str:
    """``raw`` as text; raises :class:`RecipeTextError` at the line where it is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        message = (
            f"the file is not UTF-8 text: byte {raw[err.start]:#04x} at column "
            f"{err.start - line_start + 1} is not valid UTF-8; save the recipe with UTF-8 encoding"
        )
        raise RecipeTextError(message, line=raw.count(b"\n", 0, err.start) + 1) from None
