"""Batched SAM decoding equals segment_anything's own per-image prompt encoder + mask decoder."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from mergekit_vision.contracts import Prompts
from mergekit_vision.sam.decoding import decode_masks

IMAGE_SIZE = 128
GRID = 8  # 128 px with 16 px patches
DIM = 32


def tiny_sam_heads(seed: int = 0) -> tuple[PromptEncoder, MaskDecoder]:
    torch.manual_seed(seed)
    prompt_encoder = PromptEncoder(
        embed_dim=DIM,
        image_embedding_size=(GRID, GRID),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=2, mlp_dim=64),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    # Embeddings start random already; make every learned token distinct from zero-init too.
    with torch.no_grad():
        for parameter in prompt_encoder.parameters():
            parameter.normal_()
    return prompt_encoder.eval(), mask_decoder.eval()


def make_prompts(batch: int, *, points: bool, boxes: bool, image_size: int = IMAGE_SIZE) -> Prompts:
    generator = torch.Generator().manual_seed(1)
    point_xy = torch.rand(batch, 3, 2, 2, generator=generator) * image_size
    labels = torch.tensor([[1, 0], [1, 1], [1, -1]]).expand(batch, 3, 2).clone()
    corners = torch.rand(batch, 2, 2, 2, generator=generator) * image_size
    box_xyxy = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    return Prompts(
        image_size=image_size,
        points=point_xy if points else None,
        point_labels=labels if points else None,
        boxes=box_xyxy if boxes else None,
    )


def reference_loop(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embeddings: torch.Tensor,
    prompts: Prompts,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What SAM's predictor does: per image, a points-only call then a box-only call."""
    all_masks, all_ious = [], []
    for b in range(embeddings.shape[0]):
        calls = []
        if prompts.points is not None:
            calls.append(((prompts.points[b], prompts.point_labels[b]), None))
        if prompts.boxes is not None:
            calls.append((None, prompts.boxes[b]))
        masks, ious = [], []
        for points, boxes in calls:
            sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=None)
            m, i = mask_decoder(
                image_embeddings=embeddings[b : b + 1],
                image_pe=prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            masks.append(m)
            ious.append(i)
        all_masks.append(torch.cat(masks))
        all_ious.append(torch.cat(ious))
    return torch.stack(all_masks), torch.stack(all_ious)


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize(
    ("points", "boxes"), [(True, False), (False, True), (True, True)], ids=["pts", "box", "both"]
)
def test_equals_segment_anything_per_image_loop(points: bool, boxes: bool, multimask: bool):
    prompt_encoder, mask_decoder = tiny_sam_heads()
    embeddings = torch.randn(3, DIM, GRID, GRID)
    prompts = make_prompts(3, points=points, boxes=boxes)
    with torch.no_grad():
        masks, ious = decode_masks(
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            image_embeddings=embeddings,
            prompts=prompts,
            multimask_output=multimask,
        )
        want_masks, want_ious = reference_loop(
            prompt_encoder, mask_decoder, embeddings, prompts, multimask
        )
    k = 3 if multimask else 1
    n = 3 * points + 2 * boxes
    assert masks.shape == (3, n, k, 4 * GRID, 4 * GRID)
    assert ious.shape == (3, n, k)
    torch.testing.assert_close(masks, want_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ious, want_ious, atol=1e-5, rtol=1e-5)


def test_any_embedding_size_and_prompt_frame():
    prompt_encoder, mask_decoder = tiny_sam_heads()
    embeddings = torch.randn(2, DIM, 5, 7)
    prompts = make_prompts(2, points=True, boxes=True, image_size=80)
    masks, ious = decode_masks(
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        image_embeddings=embeddings,
        prompts=prompts,
        multimask_output=True,
    )
    assert masks.shape == (2, 5, 3, 20, 28)
    assert ious.shape == (2, 5, 3)
    assert torch.isfinite(masks).all()


def test_prompt_coordinates_are_relative_to_their_image_size():
    prompt_encoder, mask_decoder = tiny_sam_heads()
    embeddings = torch.randn(2, DIM, GRID, GRID)
    small = make_prompts(2, points=True, boxes=True, image_size=64)
    # The same pixel-centre positions expressed in an image of twice the side.
    doubled = Prompts(
        image_size=128,
        points=(small.points + 0.5) * 2 - 0.5,
        point_labels=small.point_labels,
        boxes=(small.boxes + 0.5) * 2 - 0.5,
    )
    run = lambda p: decode_masks(  # noqa: E731
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        image_embeddings=embeddings,
        prompts=p,
    )[0]
    torch.testing.assert_close(run(small), run(doubled), atol=1e-4, rtol=1e-4)


def test_gradients_reach_decoder_parameters_and_embeddings():
    prompt_encoder, mask_decoder = tiny_sam_heads()
    embeddings = torch.randn(2, DIM, GRID, GRID, requires_grad=True)
    masks, ious = decode_masks(
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        image_embeddings=embeddings,
        prompts=make_prompts(2, points=True, boxes=True),
    )
    (masks.square().mean() + ious.sum()).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    # The hypernetworks of multimask tokens 1..3 are unused in single-mask mode.
    unused = {id(p) for mlp in mask_decoder.output_hypernetworks_mlps[1:] for p in mlp.parameters()}
    for name, parameter in mask_decoder.named_parameters():
        if id(parameter) not in unused:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_no_prompts_gives_empty_outputs():
    prompt_encoder, mask_decoder = tiny_sam_heads()
    masks, ious = decode_masks(
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        image_embeddings=torch.randn(2, DIM, GRID, GRID),
        prompts=Prompts(image_size=IMAGE_SIZE),
    )
    assert masks.shape == (2, 0, 1, 32, 32) and ious.shape == (2, 0, 1)


def test_mismatched_batch_is_an_error():
    prompt_encoder, mask_decoder = tiny_sam_heads()
    with pytest.raises(ValueError, match="for 3 images but the image embeddings have 2"):
        decode_masks(
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            image_embeddings=torch.randn(2, DIM, GRID, GRID),
            prompts=make_prompts(3, points=False, boxes=True),
        )
