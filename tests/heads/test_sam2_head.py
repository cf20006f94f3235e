"""The sam2_head on the sam2_hiera student, both started from a tiny real ``Sam2Model``: together
they are SAM 2 (mask logits equal to the teacher's, points and boxes, single- and multimask), the
promptable evaluation scores them as it scores the teacher, and a training step moves the
decoder but not the frozen prompt encoder."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import MergedModel
from mergekit_vision.eval.models import MergedEval, SamTeacherEval
from mergekit_vision.eval.tasks import promptable_segmentation
from mergekit_vision.heads.sam2_head import Sam2Head
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.losses.focal_dice import FocalDiceLoss
from mergekit_vision.students.sam2_hiera import Sam2HieraStudent
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.teachers.sam import SamParams, SamTeacher
from mergekit_vision.teachers.sam2 import Sam2Teacher

from ..tiny_sam2 import PROCESSOR_STATS, SIDE, tiny_sam2

POINTS = [[[[10.0, 20.0], [40.0, 33.0]], [[5.0, 60.0], [30.0, 31.0]]],
          [[[1.0, 2.0], [63.0, 30.0]], [[20.0, 24.0], [0.0, 0.0]]]]  # fmt: skip
LABELS = [[[1, 0], [1, 1]], [[1, 1], [1, -1]]]
TINY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sam_clip.yaml"
BOXES = [[[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]], [[0.0, 0.0, 64.0, 64.0], [8, 8, 9, 9]]]


@pytest.fixture(scope="module")
def teacher() -> Sam2Teacher:
    stats = dict(mean=PROCESSOR_STATS["image_mean"], std=PROCESSOR_STATS["image_std"])
    return Sam2Teacher(model=tiny_sam2(seed=5), **stats).freeze()


def _merged(teacher: Sam2Teacher, **head: object) -> tuple[Sam2HieraStudent, Sam2Head]:
    teachers = {"sam2": teacher}
    student = Sam2HieraStudent.build(Sam2HieraStudent.Params(init_from="sam2"), teachers=teachers)
    params = Sam2Head.Params(init_from="sam2", **head)
    return student.eval(), Sam2Head.build(params, student=student, teachers=teachers).eval()


def _prompts(scale: float = 1.0) -> Prompts:
    points, boxes = torch.tensor(POINTS) * scale, torch.tensor(BOXES) * scale
    return Prompts(int(SIDE * scale), points, torch.tensor(LABELS), boxes)


@pytest.mark.parametrize("multimask", [False, True])
def test_student_and_head_from_sam2_are_sam2(teacher, multimask):
    student, head = _merged(teacher, multimask_output=multimask)
    teacher.multimask_output = multimask
    images = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            wanted = teacher(images, targets=["mask_logits"], prompts=_prompts())["mask_logits"]
            (logits,) = head(student(images), prompts=_prompts()).values()
    finally:
        teacher.multimask_output = False
    assert logits.shape == wanted.shape == (2, 4, 3 if multimask else 1, SIDE // 4, SIDE // 4)
    torch.testing.assert_close(logits, wanted, rtol=0, atol=1e-5)
    assert wanted.std() > 0.5  # logits of both signs, so equality means something
    assert isinstance(head, SamHead) and head.student_levels == ("stride4", "stride8")


def test_another_input_size_decodes_on_its_own_grid(teacher):
    student, head = _merged(teacher)
    images = torch.rand(2, 3, 2 * SIDE, 2 * SIDE)
    with torch.no_grad():
        (logits,) = head(student(images), prompts=_prompts(scale=2.0)).values()
        only_boxes = Prompts(2 * SIDE, boxes=torch.tensor(BOXES) * 2)
        (boxes,) = head(student(images), prompts=only_boxes).values()
    assert logits.shape == (2, 4, 1, SIDE // 2, SIDE // 2)
    torch.testing.assert_close(boxes, logits[:, 2:])  # boxes come after the points
    assert torch.isfinite(logits).all()


def test_promptable_evaluation_scores_it_as_it_scores_the_teacher(teacher):
    student, head = _merged(teacher)
    merged = MergedEval(MergedModel(student=student, heads={"sam": head}), clip_head=None,
                        sam_head="sam")  # fmt: skip
    assert "promptable_masks" in merged.capabilities
    generator = torch.Generator().manual_seed(2)
    images = (torch.rand(3, 3, SIDE, SIDE, generator=generator) * 255).to(torch.uint8)
    masks = torch.zeros(2, SIDE, SIDE, dtype=torch.bool)
    masks[0, 8:30, 10:40], masks[1, 35:60, 5:25] = True, True
    samples = [{"image": image, "masks": masks} for image in images]
    ours = promptable_segmentation(merged, samples, max_prompts=2, batch_size=2)
    theirs = promptable_segmentation(SamTeacherEval(teacher), samples, max_prompts=2, batch_size=2)
    assert set(ours) == {"prompt_seg_miou", "prompt_seg_miou_box", "mask_ap", "mask_ap50"}
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_a_training_step_moves_the_decoder_not_the_prompt_encoder(teacher):
    student, head = _merged(teacher)
    student.train(), head.train()
    assert not head.prompt_encoder.training and not head.image_position.training
    trainable = [p for p in [*student.parameters(), *head.parameters()] if p.requires_grad]
    assert not any(p.requires_grad for p in head.prompt_encoder.parameters())
    before = {name: p.detach().clone() for name, p in head.named_parameters()}
    images = torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():
        target = teacher(images, targets=["mask_logits"], prompts=_prompts())["mask_logits"]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    (logits,) = head(student(images), prompts=_prompts()).values()
    FocalDiceLoss()(logits, target + 1.0).backward()
    optimizer.step()
    moved = {name for name, p in head.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("mask_decoder.conv_s0") for name in moved)
    assert not any(name.startswith("prompt_encoder") for name in moved)


def test_it_refuses_a_single_scale_student_and_a_sam1_teacher(teacher):
    vitdet = ViTDetStudent.build(
        ViTDetStudent.Params(variant="custom", embed_dim=32, depth=1, num_heads=2,
                             global_attn_indexes=(0,), patch_size=8, window_size=4,
                             out_chans=32, native_size=64),
        teachers={},
    )  # fmt: skip
    params = Sam2Head.Params(init_from="sam2")
    with pytest.raises(ValueError, match=r"sam2_head reads the student's feature levels.*lacks"):
        Sam2Head.build(params, student=vitdet, teachers={"sam2": teacher})
    with pytest.raises(ValueError, match="not a teacher of this recipe; teachers: sam2"):
        Sam2Head.build(Sam2Head.Params(init_from="x"), student=vitdet, teachers={"sam2": teacher})
    tiny = yaml.safe_load(TINY_RECIPE.read_text())["teachers"]["sam"]["params"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights"
        sam = SamTeacher.build(SamParams(**tiny), allow_random_init=True)
    with pytest.raises(ValueError, match="a SamTeacher is not SAM 2.*use sam_head"):
        Sam2Head.build(params, student=vitdet, teachers={"sam2": sam})
