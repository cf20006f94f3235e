"""The merged_run teacher: an earlier run's student and one head, serving that head's targets."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from mergekit_vision.contracts import STUDENTS, TEACHERS, Prompts
from mergekit_vision.engine import run_folder
from mergekit_vision.eval.models import ClipTeacherEval, SamTeacherEval, teacher_eval
from mergekit_vision.export.loading import load_run
from mergekit_vision.students.lora import apply_lora, merge_lora
from mergekit_vision.teachers import merged_run
from mergekit_vision.teachers.merged_run import fold_lora

from ..step_merge import TINY_RECIPE, train_first_run


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_checkpoints):
    return train_first_run(tmp_path_factory.mktemp("step"), tiny_checkpoints)


def teacher(run, head, **params):
    cls = TEACHERS.get("merged_run")
    return cls.build(cls.Params(run=run, head=head, **params))


def prompts(size: int) -> Prompts:
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 3, 1, 2, generator=generator) * size
    boxes = torch.tensor([[4.0, 4.0, size / 2, size / 2]]).repeat(2, 1, 1)
    return Prompts(size, points, torch.ones(2, 3, 1, dtype=torch.long), boxes)


def test_targets_are_the_earlier_merged_models_head_outputs(earlier):
    model = load_run(earlier).model
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    given = prompts(64)
    with torch.no_grad():
        features = model.student(images)
        clip = model.normalizers["clip"].denormalize(
            model.heads["clip_head"](features)["image_embedding"]
        )
        sam = model.heads["sam_head"](features, prompts=given)["mask_logits"]
        clip_teacher = teacher(earlier, "clip_head", image_size=64)
        sam_teacher = teacher(earlier, "sam_head", image_size=64)
        served_clip = clip_teacher(images, targets=["image_embedding"])["image_embedding"]
        served_sam = sam_teacher(images, targets=["mask_logits"], prompts=given)["mask_logits"]
    # the head predicts standardized embeddings: the teacher serves them in CLIP's own units
    assert not torch.allclose(clip, model.heads["clip_head"](features)["image_embedding"])
    torch.testing.assert_close(served_clip, clip)
    torch.testing.assert_close(served_sam, sam)
    assert clip_teacher.target_specs()["image_embedding"].shape == ("B", 32)
    assert sam_teacher.target_specs()["mask_logits"].needs_prompts


def test_images_and_prompts_are_resized_to_the_earlier_heads_side(earlier):
    model = load_run(earlier).model
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    sam_teacher = teacher(earlier, "sam_head")  # default: the side its task trained at
    assert sam_teacher.input_size == 64
    with torch.no_grad():
        served = sam_teacher(images, targets=["mask_logits"], prompts=prompts(48))["mask_logits"]
        at_64 = sam_teacher.prepare(images)
        scaled = prompts(48)
        scaled = Prompts(64, scaled.points * 64 / 48, scaled.point_labels, scaled.boxes * 64 / 48)
        expected = model.heads["sam_head"](model.student(at_64), prompts=scaled)["mask_logits"]
    torch.testing.assert_close(served, expected)


def test_evaluation_sees_a_clip_and_a_sam_teacher(earlier, tiny_checkpoints):
    clip_view = teacher_eval(teacher(earlier, "clip_head", image_size=64))
    sam_view = teacher_eval(teacher(earlier, "sam_head"))
    assert isinstance(clip_view, ClipTeacherEval) and isinstance(sam_view, SamTeacherEval)
    loaded = load_run(earlier)  # its CLIP teacher has real weights: the checkpoint is there
    texts = ["a photo of a cat.", "a drawing of a dog."]
    with torch.no_grad():
        torch.testing.assert_close(
            clip_view.embed_texts(texts), loaded.teachers["clip"].encode_text(texts)
        )
        dense = clip_view.embed_patches(torch.rand(1, 3, 64, 64))
        encoded = sam_view.encode(torch.rand(1, 3, 64, 64))
        masks = sam_view.mask_logits(encoded, prompts(64).select(0))
    assert dense.shape[-1] == 32 and torch.allclose(dense.norm(dim=-1), torch.tensor(1.0))
    assert masks.shape[:2] == (1, 4)  # 3 points, 1 box


def test_missing_run_folder_head_and_checkpoint_are_clear_errors(earlier, tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder .* does not exist"):
        teacher(tmp_path / "nowhere", "clip_head")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        teacher(tmp_path, "clip_head")
    with pytest.raises(ValueError, match="has no head 'dino'; its heads: clip_head, sam_head"):
        teacher(earlier, "dino")


def test_run_folder_layout_names_agree_with_the_engines():
    assert merged_run.CHECKPOINTS_DIR == run_folder.CHECKPOINTS_DIR
    assert merged_run.MODEL_FILE == run_folder.MODEL_FILE
    assert merged_run.RECIPE_FILE == run_folder.RECIPE_FILE


def test_folding_lora_into_a_state_dict_equals_merging_it_in_the_model():
    cls = STUDENTS.get("vitdet")
    params = {**yaml.safe_load(TINY_RECIPE.read_text())["student"]["params"], "init_from": None}
    student = cls.build(cls.Params(**params), teachers={})
    apply_lora(student, rank=2, alpha=4.0, targets=["qkv", "proj"])
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name.endswith("lora_b"):
                parameter.normal_()
    folded = fold_lora(student.state_dict(), scale=4.0 / 2)
    merged = copy.deepcopy(student)
    assert merge_lora(merged) > 0
    expected = merged.state_dict()
    assert folded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(folded[key], value)
