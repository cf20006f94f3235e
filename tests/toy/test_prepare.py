"""The toy app's data export: every split written once under ``toy.data_dir``, then reused;
probe seeds that repeat another split's are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.errors import RecipeError
from mergekit_vision.toy.prepare import export_toy_data, prepare_toy
from mergekit_vision.toy.spec import ToySpec

WORLD = ToyWorldConfig(image_size=48, colours=ToyWorldConfig().colours[:3])  # 12 classes


def _spec(tmp_path: Path, **fields) -> ToySpec:
    sizes = {"train_samples": 2, "eval_samples": 2, "eval_per_class": 1, "caption_samples": 3,
             "probe_train_samples": 12, "probe_heldout_samples": 24}  # fmt: skip
    return ToySpec(world=WORLD, data_dir=tmp_path, **{**sizes, **fields})


def test_probe_splits_and_captions_are_exported_once(tmp_path: Path) -> None:
    spec, out = _spec(tmp_path), io.StringIO()
    export_toy_data(spec, console=Console(file=out))
    assert "probe train" in out.getvalue() and "probe heldout" in out.getvalue()
    for folder, seed, per_class in (("probe_train", 3000, 1), ("probe_heldout", 13, 2)):
        manifest = json.loads((tmp_path / folder / "toy_world.json").read_text())
        assert (manifest["seed"], manifest["num_per_class"]) == (seed, per_class)
        assert set(manifest["datasets"]) == {"voc", "image_classes"}
    captions = json.loads((tmp_path / "eval" / "toy_world.json").read_text())["datasets"]
    assert captions["captions"]["params"]["annotations"] == "captions/dataset_toy_world.json"
    again = io.StringIO()
    export_toy_data(spec, console=Console(file=again))
    assert again.getvalue() == ""
    export_toy_data(_spec(tmp_path, probe_heldout_samples=12), console=Console(file=again))
    assert "exporting 12 toy probe heldout scenes" in again.getvalue()
    assert again.getvalue().count("exporting") == 1  # only the split whose size changed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"probe_train_seed": 2000}, "toy.probe_train_seed.*toy.train_seed"),
        ({"probe_heldout_seed": 5}, "toy.probe_heldout_seed.*toy.eval_seed"),
        ({"probe_heldout_seed": 3000}, "toy.probe_heldout_seed.*toy.probe_train_seed"),
    ],
)
def test_probe_seeds_must_be_new(tmp_path: Path, fields: dict, message: str) -> None:
    recipe = SimpleNamespace(name="toy", toy=_spec(tmp_path, **fields))
    with pytest.raises(RecipeError, match=message):
        prepare_toy(recipe, console=Console(file=io.StringIO()), teachers=False)
    assert not (tmp_path / "eval").exists()
