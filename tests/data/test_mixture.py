"""The ``mixture`` dataset: sources drawn in exactly their declared shares, each sample tagged
with its source, and per-task routing (a source reaches only the tasks whose mixture lists it)."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.mixture import allocate
from mergekit_vision.engine.build import build_components, missing_paths
from mergekit_vision.engine.streams import BatchStream, open_streams
from mergekit_vision.errors import BuildError
from mergekit_vision.recipe.io import load_recipe

from ..conftest import TINY_RECIPE


def mixture(sources: list[dict], length: int | None = None, seed: int = 0):
    cls = DATASETS.get("mixture")
    params = cls.Params.model_validate({"sources": sources, "length": length})
    return cls.build(params, resolution=16, resize="crop", seed=seed)


def synthetic(name: str, samples: int, weight: float) -> dict:
    return {"type": "synthetic", "name": name, "weight": weight, "params": {"num_samples": samples}}


def test_largest_remainder_shares_by_hand():
    # 7 x (3/4, 1/4) = (5.25, 1.75): floors (5, 1), the one slot left to the larger remainder
    assert allocate(7, [3.0, 1.0]) == [5, 2]
    # 10 / 3 each: the slot left goes to the first of the tied remainders
    assert allocate(10, [1.0, 1.0, 1.0]) == [4, 3, 3]
    assert allocate(4, [1.0, 1.0]) == [2, 2]


def test_a_pass_draws_each_source_in_exactly_its_share():
    data = mixture([synthetic("own", 5, 3.0), synthetic("generic", 4, 1.0)], length=12)
    stream = BatchStream(data, batch_size=4, seed=3)
    for passes in (1, 2):
        sources = Counter()
        for _ in range(3):  # 3 x 4 = one pass of 12
            sources.update(stream.next()["source"])
        assert sources == {"own": 9, "generic": 3}, passes
    # "own" holds 5 samples for 9 slots: all 5, then 4 of a second permutation
    keys = Counter(data[i]["key"] for i in range(len(data)) if data[i]["source"] == "own")
    assert len(keys) == 5 and sorted(keys.values()) == [1, 2, 2, 2, 2]
    assert all(k.startswith("own/synthetic/") for k in keys)
    assert set(data[0]) == {"image", "key", "source"}  # masks dropped: sources differ in them


def test_default_length_is_the_sources_together():
    data = mixture([synthetic("a", 6, 1.0), synthetic("b", 2, 1.0)])
    assert len(data) == 8
    assert Counter(data[i]["source"] for i in range(8)) == {"a": 4, "b": 4}


def test_a_source_is_the_same_in_every_mixture_that_lists_it():
    one = mixture([synthetic("generic", 4, 1.0), synthetic("x", 4, 1.0)])
    two = mixture([synthetic("y", 3, 1.0), synthetic("generic", 4, 2.0)])
    images = {s["key"]: s["image"] for d in (one, two) for s in d if s["source"] == "generic"}
    first = {s["key"]: s["image"] for s in one if s["source"] == "generic"}
    for key, image in first.items():
        assert (images[key] == image).all()
    assert not (one[0]["image"] == one[len(one) - 1]["image"]).all()  # the sources differ


def test_bad_mixtures_say_what_to_change():
    with pytest.raises(ValueError, match="'synthetic' appear more than once; give each source"):
        mixture([synthetic(None, 2, 1.0), synthetic(None, 2, 1.0)])
    with pytest.raises(ValueError, match="'rare' gets no sample of a pass of 10; raise its weight"):
        mixture([synthetic("common", 10, 1000.0), synthetic("rare", 2, 1.0)], length=10)


def routed_recipe(tmp_path, tiny_checkpoints):
    """The tiny recipe with DUNE-style routing: each task on its own source plus a shared one."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    generic = synthetic("generic", 6, 1.0)
    data["tasks"]["clip"]["data"] = {
        "type": "mixture",
        "params": {"sources": [synthetic("clip_own", 6, 1.0), generic]},
    }
    data["tasks"]["sam"]["data"] = {
        "type": "mixture",
        "params": {"sources": [synthetic("sam_own", 4, 3.0), generic], "length": 8},
    }
    for name, path in tiny_checkpoints.items():
        data["teachers"][name]["params"]["checkpoint"] = str(path)
    path = tmp_path / "routed.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_each_source_reaches_only_the_tasks_it_is_routed_to(tmp_path, tiny_checkpoints):
    c = build_components(routed_recipe(tmp_path, tiny_checkpoints))
    assert c.tasks["sam"].prompt_source == "teacher"  # a mixture has no masks
    streams = open_streams(c.tasks, seed=0)
    seen = {name: Counter() for name in streams}
    keys = {name: set() for name in streams}
    for name, stream in streams.items():
        for _ in range(6):  # 24 clip samples (2 passes of 12), 12 sam ones (1.5 passes of 8)
            batch = stream.next()
            seen[name].update(batch["source"])
            keys[name].update(
                k for k, s in zip(batch["key"], batch["source"], strict=True) if s == "generic"
            )
    assert seen["clip"] == {"clip_own": 12, "generic": 12}
    # sam: 8 x (3/4, 1/4) = (6, 2) per pass, then 4 of the next pass's 6 + 2
    assert set(seen["sam"]) == {"sam_own", "generic"} and seen["sam"].total() == 12
    assert 8 <= seen["sam"]["sam_own"] <= 10
    assert keys["sam"] <= keys["clip"]  # the shared source: the same samples in both tasks


def test_a_missing_source_path_names_its_place(tmp_path, tiny_checkpoints):
    recipe = routed_recipe(tmp_path, tiny_checkpoints)
    data = recipe.model_dump(mode="json")
    folder = {"type": "image_folder", "params": {"root": str(tmp_path / "nowhere")}}
    data["tasks"]["clip"]["data"]["params"]["sources"][1] = folder
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(data))
    issues = missing_paths(load_recipe(path), weight_names=False)
    assert [i.path for i in issues] == ["tasks.clip.data.params.sources.1.params.root"]
    with pytest.raises(BuildError):
        build_components(load_recipe(path))
