"""Ranges of the recipe's numbers whose code has one, as types for the schema and for plugin
``Params`` (a plugin seed is a :data:`Seed`).

Seeds: numpy takes none below 0, and seeds derived from them (``seed * 1_000_003 + epoch``) must
stay within torch's 64 bits. Counts (steps, intervals): 32 bits. Sides, batches and workers: far
beyond any real run, so that a typo is caught before it allocates.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1
MAX_SIDE = 16_384
MAX_BATCH = 65_536
MAX_WORKERS = 256
MAX_EPOCHS = 1_000_000
MAX_PROMPTS = 4096  # per image; SAM's automatic mask generator prompts 32 x 32 points
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Side = Annotated[int, Field(ge=8, le=MAX_SIDE)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Beta = Annotated[float, Field(ge=0, lt=1)]  # AdamW's moment decay (torch refuses others)


def _sides(value: int | list[int]) -> int | list[int]:
    # One message for the union, not one per branch (``resolution.int``, ``resolution.list``).
    sides = value if isinstance(value, list) else [value]
    if not sides:
        raise ValueError("give a side in px or a list of at least one")
    for side in sides:
        if not 8 <= side <= MAX_SIDE:
            got = f" (got {side} in the list)" if isinstance(value, list) else ""
            raise ValueError(f"a side must lie in [8, {MAX_SIDE}] px{got}")
    return value


_SIDE_SCHEMA = {"type": "integer", "minimum": 8, "maximum": MAX_SIDE}
Resolution = Annotated[
    int | list[int],
    AfterValidator(_sides),
    WithJsonSchema(
        {"anyOf": [_SIDE_SCHEMA, {"type": "array", "items": _SIDE_SCHEMA, "minItems": 1}]}
    ),
]
