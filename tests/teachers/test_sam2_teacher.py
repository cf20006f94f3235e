"""The SAM 2 teacher on a tiny random ``Sam2Model`` written by ``save_pretrained``: its mask
logits are transformers' own ``Sam2Model`` forward on what ``Sam2Processor`` makes of the same
image and prompts, and SAM 2 serves the SAM task, its training and its evaluation as SAM does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import Sam2ImageProcessor, Sam2Processor

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import Prompts, Teacher
from mergekit_vision.errors import WeightsFileError
from mergekit_vision.eval.models import SamTeacherEval, teacher_eval
from mergekit_vision.eval.tasks import promptable_segmentation
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.teachers.sam2 import Sam2Params, Sam2Teacher

from ..hub_cache import folder_files, offline_hub, write_hub_repo
from ..tiny_sam2 import PROCESSOR_STATS, SIDE, TINY_SAM2_CONFIG, write_tiny_sam2

# two clicks per prompt; label 0 is a background click, -1 a click to ignore
POINTS = [[[[10.0, 20.0], [40.0, 33.0]], [[5.0, 60.0], [30.0, 31.0]]],
          [[[1.0, 2.0], [63.0, 30.0]], [[20.0, 24.0], [0.0, 0.0]]]]  # fmt: skip
LABELS = [[[1, 0], [1, 1]], [[1, 1], [1, -1]]]
BOXES = [[[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]], [[0.0, 0.0, 64.0, 64.0], [8, 8, 9, 9]]]


@pytest.fixture(scope="module")
def sam2_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("sam2")
    return folder, write_tiny_sam2(folder)


def _processor() -> Sam2Processor:
    images = Sam2ImageProcessor(size={"height": SIDE, "width": SIDE}, **PROCESSOR_STATS)
    return Sam2Processor(image_processor=images)


def _uint8_images(side: int, count: int = 2) -> torch.Tensor:
    return (torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(1)) * 255).to(
        torch.uint8
    )


def _prompts(side: int) -> Prompts:
    return Prompts(side, torch.tensor(POINTS), torch.tensor(LABELS), torch.tensor(BOXES))


def test_registered():
    # No TEACHERS.get(): that imports every built-in plugin, which this test must not depend on.
    assert Sam2Teacher.registry_name == "sam2" and issubclass(Sam2Teacher, Teacher)


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_logits_are_sam2_models_forward_on_the_processors_inputs(sam2_folder, multimask):
    folder, model = sam2_folder
    teacher = Sam2Teacher.build(Sam2Params(checkpoint=folder, multimask_output=multimask))
    images = _uint8_images(SIDE)
    pictures = [image.permute(1, 2, 0).numpy() for image in images]
    by_points = _processor()(
        images=pictures, input_points=POINTS, input_labels=LABELS, return_tensors="pt"
    )
    by_boxes = _processor()(images=pictures, input_boxes=BOXES, return_tensors="pt")
    floats = images.float() / 255
    assert torch.allclose(teacher.prepare(floats), by_points["pixel_values"], atol=1e-5)

    ours = teacher(floats, targets=["mask_logits"], prompts=_prompts(SIDE))["mask_logits"]
    with torch.no_grad():
        points = model(**by_points, multimask_output=multimask).pred_masks
        boxes = model(**by_boxes, multimask_output=multimask).pred_masks
    assert ours.shape == (2, 4, 3 if multimask else 1, 16, 16)
    assert torch.allclose(ours, torch.cat([points, boxes], dim=1), atol=1e-5)
    assert ours.std() > 0.01  # random weights still give masks that depend on the prompt


def test_prompts_at_another_size_are_scaled_as_sam2_processor_scales_them(sam2_folder):
    folder, model = sam2_folder
    teacher = Sam2Teacher.build(Sam2Params(checkpoint=folder))
    side = 2 * SIDE
    images = torch.rand(2, 3, side, side)
    given = _prompts(SIDE)  # the same numbers, now pixels of a 128-pixel image
    prompts = Prompts(side, given.points, given.point_labels, given.boxes)
    converted = _processor()(
        original_sizes=[[side, side]] * 2,
        input_points=POINTS,
        input_labels=LABELS,
        input_boxes=BOXES,
        return_tensors="pt",
    )
    assert torch.equal(converted["input_boxes"], given.boxes / 2)
    pixels = teacher.prepare(images)
    with torch.no_grad():
        expected = [
            model(pixel_values=pixels, multimask_output=False, **kinds).pred_masks
            for kinds in (
                {"input_points": converted["input_points"], "input_labels": given.point_labels},
                {"input_boxes": converted["input_boxes"]},
            )
        ]
        embeddings = model.get_image_embeddings(pixels)[-1]
    out = teacher(images, targets=["mask_logits", "image_embeddings"], prompts=prompts)
    assert torch.allclose(out["mask_logits"], torch.cat(expected, dim=1), atol=1e-5)
    assert torch.equal(out["image_embeddings"], embeddings)
    assert teacher.target_specs()["image_embeddings"].shape == ("B", 32, 4, 4)


def test_save_pretrained_folder_round_trip(sam2_folder):
    folder, model = sam2_folder
    teacher = Sam2Teacher.build(Sam2Params(checkpoint=folder))
    own = teacher.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
    assert teacher.pixel_mean == tuple(PROCESSOR_STATS["image_mean"])
    assert teacher.pixel_std == tuple(PROCESSOR_STATS["image_std"])
    assert teacher.input_size == SIDE
    assert not any(p.requires_grad for p in teacher.parameters())
    fields = Sam2Teacher.checkpoint_fields(Sam2Params(checkpoint=folder))
    assert fields == {"checkpoint": folder / "config.json"}


def test_a_hub_repo_id_loads_the_cached_snapshot(sam2_folder, tmp_path, monkeypatch):
    folder, model = sam2_folder
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    snapshot = write_hub_repo(cache, "tiny-org/sam2", folder_files(folder))
    params = Sam2Params(pretrained="tiny-org/sam2")
    assert Sam2Teacher.checkpoint_fields(params) == {"pretrained": snapshot / "config.json"}
    teacher = Sam2Teacher.build(params)
    assert torch.equal(
        teacher.model.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight
    )
    with pytest.raises(ValidationError, match="not both"):
        Sam2Params(pretrained="tiny-org/sam2", checkpoint=folder)


def test_folders_that_are_not_sam2_are_refused_with_the_reason(sam2_folder, tmp_path):
    folder, _ = sam2_folder
    other = tmp_path / "dinov2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(WeightsFileError, match="holds a 'dinov2' model.*sam teacher for SAM 1"):
        Sam2Teacher.build(Sam2Params(checkpoint=other))

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((folder / "config.json").read_bytes())
    weights = load_file(folder / "model.safetensors")
    del weights["mask_decoder.iou_token.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsFileError, match="mask_decoder.iou_token.weight is missing"):
        Sam2Teacher.build(Sam2Params(checkpoint=partial))

    config = json.loads((folder / "config.json").read_text())
    config["mask_decoder_config"]["mlp_dim"] = 48
    (partial / "config.json").write_text(json.dumps(config))
    (partial / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(WeightsFileError, match=r"proj_in.bias is \(64,\) in the file, \(48,\)"):
        Sam2Teacher.build(Sam2Params(checkpoint=partial))

    with pytest.raises(ValueError, match="needs 'checkpoint'.*allow_random_init"):
        Sam2Teacher.build(Sam2Params(config=TINY_SAM2_CONFIG))
    bigger = {**TINY_SAM2_CONFIG, "prompt_encoder_config": {"image_size": 128, "hidden_size": 32}}
    with pytest.raises(ValueError, match=r"do not fit .*image_size 128.*\[\[32, 32\]"):
        Sam2Teacher.build(Sam2Params(config=bigger), allow_random_init=True)
    backbone = {**TINY_SAM2_CONFIG["vision_config"]["backbone_config"]}
    del backbone["model_type"]  # transformers alone says KeyError: 'None'
    untyped = {**TINY_SAM2_CONFIG, "vision_config": {**TINY_SAM2_CONFIG["vision_config"],
                                                       "backbone_config": backbone}}  # fmt: skip
    with pytest.raises(ValueError, match="backbone_config.model_type: sam2_hiera_det_model"):
        Sam2Teacher.build(Sam2Params(config=untyped), allow_random_init=True)


def test_promptable_evaluation_decodes_with_sam2s_own_decoder(sam2_folder):
    teacher = Sam2Teacher.build(Sam2Params(checkpoint=sam2_folder[0]))
    evaluated = teacher_eval(teacher)
    assert isinstance(evaluated, SamTeacherEval) and evaluated.decodes_itself
    images = _uint8_images(SIDE).float() / 255
    prompts = _prompts(SIDE)
    logits = evaluated.mask_logits(evaluated.encode(images), prompts)
    forward = teacher(images, targets=["mask_logits"], prompts=prompts)["mask_logits"]
    assert torch.equal(logits, forward[:, :, 0])
    assert evaluated.dense_features(images).shape == (2, 32, 4, 4)

    masks = torch.zeros(2, SIDE, SIDE, dtype=torch.bool)
    masks[0, 8:30, 10:40], masks[1, 35:60, 5:25] = True, True
    samples = [{"image": image, "masks": masks} for image in _uint8_images(SIDE, 3)]
    scores = promptable_segmentation(evaluated, samples, max_prompts=2, batch_size=2)
    assert set(scores) == {"prompt_seg_miou", "prompt_seg_miou_box", "mask_ap", "mask_ap50"}
    assert all(0 <= value <= 1 for value in scores.values())


def test_sam_head_asks_for_a_sam_teacher_to_start_from(sam2_folder):
    teacher = Sam2Teacher.build(Sam2Params(checkpoint=sam2_folder[0]))
    with pytest.raises(ValueError, match="Sam2MaskDecoder.*initialise sam_head from a 'sam'"):
        SamHead.build(SamHead.Params(init_from="sam2"), student=None, teachers={"sam2": teacher})


def test_a_sam_task_distils_sam2_through_the_engine(sam2_folder, tiny_recipe_args, tmp_path):
    """tiny_sam_clip.yaml with its SAM task's targets from SAM 2; the SAM teacher stays for the
    student's and the SAM head's initial weights."""
    run = tmp_path / "run"
    swap = [
        "--set", "teachers.sam2.type=sam2",
        "--set", f"teachers.sam2.params.checkpoint={sam2_folder[0]}",
        "--set", "tasks.sam.teacher=sam2",
        "--set", "stages.0.steps=1",
    ]  # fmt: skip
    assert main(["run", *tiny_recipe_args, *swap, "--output", str(run), "--max-steps", "2"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert "loss/sam" not in lines[0] and math.isfinite(lines[1]["loss/sam"])
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert resolved["tasks"]["sam"]["teacher"] == "sam2"
    assert resolved["teachers"]["sam2"]["type"] == "sam2"
