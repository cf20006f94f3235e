"""--format hf: a Hugging Face Hub folder that ``from_pretrained`` rebuilds exactly, offline."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import Prompts
from mergekit_vision.export.hf import HubMergedModel
from mergekit_vision.export.loading import load_run


@pytest.fixture(scope="module")
def exported(tiny_run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    assert main(["export", str(tiny_run_dir), "--format", "hf", "--output", str(folder)]) == 0
    return folder


def outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The student's features and every head's output on ``images``."""
    points = torch.tensor([[[[10.0, 20.0], [40.0, 33.0]]]]).expand(len(images), -1, -1, -1)
    prompts = Prompts(image_size=64, points=points, point_labels=torch.ones(len(images), 1, 2))
    with torch.no_grad():
        features = model.student(images)
        found = {"tokens": features.tokens, "feature_map": features.feature_map}
        for name, head in model.heads.items():
            found.update({f"{name}.{k}": v for k, v in head(features, prompts=prompts).items()})
    return found


def test_from_pretrained_rebuilds_the_same_model(tiny_run, exported):
    assert {p.name for p in exported.iterdir()} == {
        "config.json",
        "model.safetensors",
        "recipe.resolved.yaml",
        "README.md",
    }
    config = json.loads((exported / "config.json").read_text())
    assert config == {"recipe": tiny_run.recipe.model_dump(mode="json")}
    loaded = HubMergedModel.from_pretrained(exported, local_files_only=True)
    assert not loaded.training
    state, original = loaded.state_dict(), tiny_run.model.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours, reference = outputs(loaded, images), outputs(tiny_run.model, images)
    assert set(ours) == {
        "tokens",
        "feature_map",
        "clip_head.image_embedding",
        "sam_head.mask_logits",
    }
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_card_has_hub_metadata_and_the_folder_is_a_checkpoint(tiny_run, exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mergekit-vision\n")
    assert "# tiny_sam_clip" in card and "- `clip`: `open_clip` (model=tiny-clip" in card
    assert "HubMergedModel.from_pretrained(" in card
    again = load_run(exported).model.state_dict()  # vmerge's own loader reads it too
    assert all(torch.equal(again[k], v) for k, v in tiny_run.model.state_dict().items())


def test_a_missing_weight_is_an_error_not_a_random_one(exported, tmp_path):
    for path in exported.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["heads.clip_head.mlp.4.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="heads.clip_head.mlp.4.weight"):
        HubMergedModel.from_pretrained(tmp_path, local_files_only=True)
