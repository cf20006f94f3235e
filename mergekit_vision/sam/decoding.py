"""Batched SAM mask decoding: many images, many prompts, one decoder pass per prompt kind.

segment_anything's ``MaskDecoder.predict_masks`` repeats ONE image embedding once per prompt
(``repeat_interleave(image_embeddings, n)``), so distilling a batch of images means a Python loop
over images. Here every prompt of every image is decoded in one pass by expanding each image's
embedding over its own prompts, and prompt coordinates are normalized by the size of the image they
were given in (:class:`~mergekit_vision.contracts.Prompts`), with the dense positional encoding
computed for the embedding's actual grid, so a student at 512 px (32x32) decodes as well as SAM at
1024 px (64x64).

The arithmetic is SAM's (Kirillov et al., "Segment Anything", ICCV 2023, arXiv 2304.02643): point
prompts get the pad token SAM's predictor adds when no box is given, boxes are two corner tokens,
no mask prompt means the learned ``no_mask_embed`` everywhere.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import Tensor

from mergekit_vision.contracts import Prompts


def decode_masks(
    *,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: Tensor,
    prompts: Prompts,
    multimask_output: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode every prompt of every image in one batch.

    Point prompts and box prompts are separate prompt sets, exactly as SAM's predictor decodes a
    points-only or a box-only input.

    Args:
        prompt_encoder: SAM's prompt encoder (only its embeddings and ``pe_layer`` are used).
        mask_decoder: SAM's mask decoder.
        image_embeddings: ``[B, C, h, w]`` image encoder output, any ``h, w``.
        prompts: ``Np`` point prompts and/or ``Nb`` box prompts per image, in pixels of an image
            of side ``prompts.image_size``.
        multimask_output: return SAM's 3 ambiguity-aware masks instead of its single mask.

    Returns:
        mask logits ``[B, N, K, 4h, 4w]`` and IoU predictions ``[B, N, K]`` with ``N = Np + Nb``
        (all point prompts first, then all box prompts) and ``K`` 3 or 1.
    """
    batch, _, height, width = image_embeddings.shape
    _check_prompts(prompts, batch)
    position = prompt_encoder.pe_layer((height, width)).unsqueeze(0)
    sparse_sets = []
    if prompts.points is not None:
        sparse_sets.append(
            embed_points(prompt_encoder, prompts.points, prompts.point_labels, prompts.image_size)
        )
    if prompts.boxes is not None:
        sparse_sets.append(embed_boxes(prompt_encoder, prompts.boxes, prompts.image_size))
    masks, ious = [], []
    for sparse in sparse_sets:
        set_masks, set_ious = _decode_prompt_set(
            mask_decoder=mask_decoder,
            image_embeddings=image_embeddings,
            image_pe=position,
            sparse=sparse,
            no_mask=prompt_encoder.no_mask_embed.weight,
            multimask_output=multimask_output,
        )
        masks.append(set_masks)
        ious.append(set_ious)
    if not masks:
        k = mask_decoder.num_multimask_outputs if multimask_output else 1
        empty = image_embeddings.new_zeros(batch, 0, k, 4 * height, 4 * width)
        return empty, image_embeddings.new_zeros(batch, 0, k)
    return torch.cat(masks, dim=1), torch.cat(ious, dim=1)


def embed_points(
    prompt_encoder: PromptEncoder, points: Tensor, labels: Tensor, image_size: int
) -> Tensor:
    """SAM's point embedding (with its padding token), normalized by ``image_size``.

    Args:
        points: ``[B, Np, P, 2]`` pixel ``(x, y)``.
        labels: ``[B, Np, P]`` 1 foreground, 0 background, -1 ignored.

    Returns:
        ``[B, Np, P + 1, D]``.
    """
    # SAM's predictor appends a "not a point" token at (0, 0) whenever no box is given.
    pad_point = points.new_zeros(*points.shape[:2], 1, 2)
    pad_label = labels.new_full((*labels.shape[:2], 1), -1)
    coords = torch.cat([points, pad_point], dim=2) + 0.5  # pixel centres, as SAM
    labels = torch.cat([labels, pad_label], dim=2).unsqueeze(-1)
    encoding = prompt_encoder.pe_layer._pe_encoding((coords / image_size).float())
    negative = prompt_encoder.point_embeddings[0].weight
    positive = prompt_encoder.point_embeddings[1].weight
    embedded = encoding + (labels == 0) * negative + (labels == 1) * positive
    return torch.where(labels == -1, prompt_encoder.not_a_point_embed.weight, embedded)


def embed_boxes(prompt_encoder: PromptEncoder, boxes: Tensor, image_size: int) -> Tensor:
    """SAM's two-corner box embedding, normalized by ``image_size``.

    Args:
        boxes: ``[B, Nb, 4]`` pixel ``(x0, y0, x1, y1)``.

    Returns:
        ``[B, Nb, 2, D]``.
    """
    corners = (boxes.reshape(*boxes.shape[:2], 2, 2) + 0.5) / image_size
    encoding = prompt_encoder.pe_layer._pe_encoding(corners.float())
    corner_embeddings = torch.cat(
        [prompt_encoder.point_embeddings[2].weight, prompt_encoder.point_embeddings[3].weight]
    )
    return encoding + corner_embeddings


def _decode_prompt_set(
    *,
    mask_decoder: MaskDecoder,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    no_mask: Tensor,
    multimask_output: bool,
) -> tuple[Tensor, Tensor]:
    """``MaskDecoder.predict_masks`` with each image's embedding expanded over its own prompts.

    Args:
        image_embeddings: ``[B, C, h, w]``.
        image_pe: ``[1, C, h, w]``.
        sparse: ``[B, N, T, C]`` prompt tokens (the same ``T`` for every prompt of the set).
        no_mask: ``[1, C]`` the dense embedding used when no mask prompt is given.

    Returns:
        ``[B, N, K, 4h, 4w]`` mask logits and ``[B, N, K]`` IoU predictions.
    """
    batch, count, tokens_per_prompt, channels = sparse.shape
    _, _, height, width = image_embeddings.shape
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight])
    output_tokens = output_tokens.expand(batch * count, -1, -1)
    tokens = torch.cat([output_tokens, sparse.reshape(batch * count, tokens_per_prompt, -1)], 1)
    source = image_embeddings.unsqueeze(1).expand(-1, count, -1, -1, -1)
    source = source.reshape(batch * count, channels, height, width) + no_mask.view(1, -1, 1, 1)
    position = image_pe.expand(batch * count, -1, -1, -1)

    hidden, source = mask_decoder.transformer(source, position, tokens)
    iou_token = hidden[:, 0, :]
    mask_tokens = hidden[:, 1 : 1 + mask_decoder.num_mask_tokens, :]
    source = source.transpose(1, 2).reshape(batch * count, channels, height, width)
    upscaled = mask_decoder.output_upscaling(source)
    hyper_in = torch.stack(
        [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    up_channels, up_height, up_width = upscaled.shape[1:]
    masks = hyper_in @ upscaled.reshape(batch * count, up_channels, up_height * up_width)
    masks = masks.reshape(batch, count, -1, up_height, up_width)
    ious = mask_decoder.iou_prediction_head(iou_token).reshape(batch, count, -1)
    # Token 0 is SAM's single-mask output; tokens 1.. are its multimask outputs.
    selection = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, :, selection], ious[:, :, selection]


def _check_prompts(prompts: Prompts, batch: int) -> None:
    if prompts.points is not None:
        if prompts.point_labels is None:
            raise ValueError("Prompts.points is given without Prompts.point_labels")
        if prompts.points.shape[:3] != prompts.point_labels.shape or prompts.points.ndim != 4:
            raise ValueError(
                "Prompts.points must be [B, Np, P, 2] and point_labels [B, Np, P]; got "
                f"{tuple(prompts.points.shape)} and {tuple(prompts.point_labels.shape)}"
            )
    if prompts.boxes is not None and (prompts.boxes.ndim != 3 or prompts.boxes.shape[-1] != 4):
        raise ValueError(f"Prompts.boxes must be [B, Nb, 4]; got {tuple(prompts.boxes.shape)}")
    for name in ("points", "boxes"):
        tensor = getattr(prompts, name)
        if tensor is not None and tensor.shape[0] != batch:
            raise ValueError(
                f"Prompts.{name} is for {tensor.shape[0]} images "
                f"but the image embeddings have {batch}"
            )
