from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from mergekit_vision.contracts import Prompts, StudentFeatures, TargetSpec, Teacher
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.students.vitdet import ViTDetStudent

WIDTH = 32  # prompt / decoder width = student out_chans
IMAGE = 64  # pixels; a 4x4 embedding grid at patch 16


class FakeSamTeacher(Teacher):
    """Hands out real (tiny, random) segment_anything prompt encoder and mask decoder."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.prompt_encoder = PromptEncoder(
            embed_dim=WIDTH,
            image_embedding_size=(IMAGE // 16, IMAGE // 16),
            input_image_size=(IMAGE, IMAGE),
            mask_in_chans=4,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=WIDTH,
            transformer=TwoWayTransformer(depth=1, embedding_dim=WIDTH, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=2,
            iou_head_hidden_dim=WIDTH,
        )
        self.freeze()

    @classmethod
    def build(cls, params, *, allow_random_init=False):  # pragma: no cover - not used
        raise NotImplementedError

    def target_specs(self) -> dict[str, TargetSpec]:
        return {"mask_logits": TargetSpec(("B", "N", "K", "H", "W"), needs_prompts=True)}

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:  # pragma: no cover - not used
        return {}

    def component(self, name: str) -> nn.Module:
        return {"prompt_encoder": self.prompt_encoder, "mask_decoder": self.mask_decoder}[name]


def tiny_student(out_chans: int = WIDTH) -> ViTDetStudent:
    return ViTDetStudent(
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=2,
        out_chans=out_chans,
        native_size=IMAGE,
    )


def build_head(teacher: FakeSamTeacher, **params) -> SamHead:
    return SamHead.build(
        SamHead.Params(init_from="sam", **params),
        student=tiny_student(),
        teachers={"sam": teacher},
    )


def point_prompts(batch: int = 2, count: int = 3) -> Prompts:
    torch.manual_seed(1)
    points = torch.rand(batch, count, 1, 2) * IMAGE
    return Prompts(image_size=IMAGE, points=points, point_labels=torch.ones(batch, count, 1))


def embeddings(batch: int = 2) -> StudentFeatures:
    grid = IMAGE // 16
    return StudentFeatures(
        tokens=torch.zeros(batch, grid, grid, 32),
        feature_map=torch.randn(batch, WIDTH, grid, grid),
        image_size=IMAGE,
    )


@pytest.mark.parametrize("multimask_output", [False, True])
def test_matches_segment_anythings_own_decoding(multimask_output: bool):
    teacher = FakeSamTeacher()
    head = build_head(teacher, multimask_output=multimask_output).eval()
    features, prompts = embeddings(), point_prompts()
    with torch.no_grad():
        logits = head(features, prompts=prompts)["mask_logits"]
    k = 3 if multimask_output else 1
    assert logits.shape == (2, 3, k, 4 * IMAGE // 16, 4 * IMAGE // 16)
    for image in range(2):  # SAM decodes one image at a time
        with torch.no_grad():
            sparse, dense = teacher.prompt_encoder(
                points=(prompts.points[image, :, :, :], prompts.point_labels[image]),
                boxes=None,
                masks=None,
            )
            expected, _ = teacher.mask_decoder(
                image_embeddings=features.feature_map[image : image + 1],
                image_pe=teacher.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        torch.testing.assert_close(logits[image], expected, rtol=1e-4, atol=1e-4)


def test_prompt_encoder_frozen_and_decoder_trained():
    teacher = FakeSamTeacher()
    head = build_head(teacher).train()
    assert not any(p.requires_grad for p in head.prompt_encoder.parameters())
    assert not head.prompt_encoder.training
    assert head.mask_decoder.training
    features = embeddings()
    features.feature_map.requires_grad_(True)
    head(features, prompts=point_prompts())["mask_logits"].square().mean().backward()
    # Single-mask output uses mask token 0 only; the other tokens and the IoU head get no loss.
    decoder = head.mask_decoder
    used = [decoder.transformer, decoder.output_upscaling, decoder.output_hypernetworks_mlps[0]]
    grads = [p.grad for module in used for p in module.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert features.feature_map.grad is not None
    # the teacher's own modules are untouched copies
    assert head.mask_decoder is not teacher.mask_decoder
    assert not any(p.requires_grad for p in teacher.mask_decoder.parameters())


def test_box_prompts_follow_point_prompts():
    head = build_head(FakeSamTeacher()).eval()
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0]], [[0.0, 10.0, 63.0, 63.0]]])
    prompts = point_prompts()
    both = Prompts(IMAGE, prompts.points, prompts.point_labels, boxes)
    with torch.no_grad():
        logits = head(embeddings(), prompts=both)["mask_logits"]
    assert logits.shape[:3] == (2, 4, 1)


def test_errors():
    teacher = FakeSamTeacher()
    head = build_head(teacher)
    with pytest.raises(ValueError, match="needs prompts"):
        head(embeddings())
    with pytest.raises(ValueError, match="out_channels 256 != prompt encoder embed_dim 32"):
        SamHead.build(
            SamHead.Params(init_from="sam"), student=tiny_student(256), teachers={"sam": teacher}
        )
    with pytest.raises(ValueError, match="'sma' is not a teacher.*sam"):
        SamHead.build(
            SamHead.Params(init_from="sma"), student=tiny_student(), teachers={"sam": teacher}
        )
