"""Train a tiny segment_anything ``Sam`` on toy-world scenes, saved as an official SAM checkpoint.

The recipe is SAM's own (Kirillov et al., "Segment Anything", ICCV 2023, arXiv 2304.02643,
sec. 3 and appendix A), shrunk: the whole model (image encoder, prompt encoder, mask decoder)
trains from scratch on generated scenes; each prompt is one positive click drawn uniformly inside
a visible instance mask, or that instance's box with Gaussian corner noise; the loss is
``20 * focal + dice`` against the ground-truth mask at the decoder's low-resolution output (4x
the embedding grid), plus the MSE of the IoU head to the IoU the predicted mask actually has.

Three departures speed up training from scratch, all measured on the toy world: the focal
loss weighs positive pixels 0.75 (not 0.25), the decoder's cross-attentions start with tied
query/key projections (:func:`align_decoder_attention`), and the linear layers' weight matrices
train with Muon instead of AdamW (``ToySamTraining.optimizer``; docs/toy-world.md links the
measurements).

Toy objects are unambiguous, so only SAM's single-mask output (token 0, what the ``sam``
teacher returns by default) is trained; its three multimask tokens stay untrained. Masks are
decoded for every prompt of every image at once by
:func:`mergekit_vision.sam.decoding.decode_masks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from segment_anything.modeling import Sam
from torch import Tensor

from mergekit_vision.contracts import Prompts, resize_and_normalize
from mergekit_vision.data.toy_world.world import Scene, ToyWorldConfig, generate_scene
from mergekit_vision.eval.metrics import mask_iou
from mergekit_vision.eval.tasks import interior_points
from mergekit_vision.losses.focal_dice import dice_loss, sigmoid_focal_loss
from mergekit_vision.registry import PluginParams
from mergekit_vision.sam.decoding import decode_masks
from mergekit_vision.teachers.sam import SamParams, SamTeacher, build_sam_model
from mergekit_vision.toy.fitting import (
    Optimizers,
    Schedules,
    adamw_warmup_cosine,
    muon_warmup_cosine,
    save_atomically,
    training_progress,
)

# Disjoint from the seeds evaluations use (0..999): no evaluation scene is ever trained on.
SAM_TRAIN_SEED = 1000
SAM_EVAL_SEED = 7


class ToySamTraining(PluginParams):
    """How the toy SAM teacher trains. With the default world and architecture
    (:data:`~mergekit_vision.toy.teachers.TOY_SAM`) the defaults reach a centre-click mIoU of
    about 0.84 on held-out scenes; docs/toy-world.md links the notes that measured these
    defaults and the settings that were tried instead.

    Args:
        steps: optimiser steps.
        batch_size: scenes per step.
        prompts_per_image: prompts per scene (each picks a visible instance, all before repeats).
        box_fraction: share of those prompts that are noisy boxes instead of one click.
        box_noise: std of each box corner's noise as a fraction of the box side (SAM: 0.1).
        optimizer: ``"muon"``, Muon for the linear layers' weight matrices and AdamW for the
            rest (:func:`~mergekit_vision.toy.fitting.muon_warmup_cosine`), or ``"adamw"`` for
            everything, SAM's own optimiser. At 1000 steps Muon's teacher scores 0.86 point mIoU
            against AdamW's 0.78 (docs/toy-world.md).
        lr: peak learning rate of both optimisers (with ``muon``, 3e-3 to 6e-3 end equally good;
            for ``adamw`` use 7.5e-4 to 1.5e-3: at 3e-3 it ends 0.02 worse, at 6e-3 0.10 worse;
            docs/toy-world.md).
        weight_decay: AdamW decay of weight matrices.
        warmup: linear warmup steps before the cosine decay.
        focal_weight: weight of the focal term (SAM: 20, dice 1).
        focal_alpha: the focal loss's weight of positive pixels. Lin et al. 2017 use 0.25; at
            0.25 a SAM trained from scratch first predicts background everywhere and stays
            there for hundreds of steps, at 0.75 it leaves that state within ~50.
        iou_weight: weight of the IoU head's MSE.
        qk_init_gain: start each cross-attention of the mask decoder with its key projection
            equal to its query projection, both scaled by this gain (see
            :func:`align_decoder_attention`); None keeps segment_anything's random init.
        seed: the toy world's seed for training scenes; torch's init seed too.
    """

    optimizer: Literal["muon", "adamw"] = "muon"
    steps: int = Field(default=800, ge=1)
    batch_size: int = Field(default=8, ge=1)
    prompts_per_image: int = Field(default=8, ge=1)
    box_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    box_noise: float = Field(default=0.1, ge=0.0)
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=0.05, ge=0.0)
    warmup: int = Field(default=20, ge=0)
    focal_weight: float = Field(default=20.0, ge=0.0)
    focal_alpha: float = Field(default=0.75, ge=0.0, le=1.0)
    iou_weight: float = Field(default=1.0, ge=0.0)
    qk_init_gain: float | None = Field(default=3.0, gt=0.0)
    seed: int = Field(default=SAM_TRAIN_SEED, ge=0)


def build_untrained_sam(params: SamParams) -> Sam:
    """segment_anything's ``Sam`` for ``params``, randomly initialised (ignores the checkpoint)."""
    embed_dim, depth, heads, global_blocks = params.encoder_sizes()
    return build_sam_model(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_blocks,
        image_size=params.image_size,
        patch_size=params.patch_size,
        window_size=params.window_size,
        prompt_embed_dim=params.prompt_embed_dim,
        decoder_depth=params.decoder_depth,
        decoder_mlp_dim=params.decoder_mlp_dim,
        decoder_num_heads=params.decoder_num_heads,
        mask_in_chans=params.mask_in_chans,
    )


def align_decoder_attention(sam: Sam, *, gain: float) -> None:
    """Start the mask decoder's cross-attentions with positional matching already in place.

    Queries and keys both carry positional encodings (random Fourier features, Tancik et al.
    2020): ``q = Wq (x + pe_x)``, ``k = Wk (y + pe_y)``. With ``Wk = Wq = gain * W`` their product
    contains ``pe_x^T W^T W pe_y``, a kernel peaked where the two positions coincide, so from the
    first step a prompt token attends to the image around its own location (and back). From two
    independent random projections that alignment has to be discovered first, which costs
    hundreds of steps on the toy world before the masks depend on the prompt at all. Only the
    initial values change; every weight trains freely afterwards.
    """
    transformer = sam.mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for attention in attentions:
            attention.q_proj.weight.mul_(gain)
            attention.k_proj.weight.copy_(attention.q_proj.weight)
            attention.k_proj.bias.copy_(attention.q_proj.bias)


def scene_batch(world: ToyWorldConfig, *, seed: int, start: int, count: int) -> list[Scene]:
    """Scenes ``start..start+count-1`` of ``seed``; a scene where nothing could be placed (the
    world allows it in principle) is redrawn with a single object."""
    scenes = []
    for index in range(start, start + count):
        scene = generate_scene(world, seed=seed, index=index)
        if not scene.masks.shape[0]:
            scene = generate_scene(world, seed=seed, index=index, num_objects=1)
        scenes.append(scene)
    return scenes


def sample_prompts(
    scenes: list[Scene],
    *,
    num_points: int,
    num_boxes: int,
    box_noise: float,
    rng: np.random.Generator,
) -> tuple[Prompts, Tensor]:
    """SAM's simulated prompts for each scene, and the mask each prompt asks for.

    Each scene's prompts walk through a random permutation of its instances (repeating it when
    there are more prompts than instances), so the first ``M`` prompts cover all ``M`` objects.

    Returns:
        prompts (points ``[B, Np, 1, 2]``, boxes ``[B, Nb, 4]``, pixels of the scene) and the
        target masks ``bool [B, Np + Nb, S, S]`` in the same order (points, then boxes).
    """
    count = num_points + num_boxes
    size = int(scenes[0].image.shape[-1])
    points = np.zeros((len(scenes), num_points, 1, 2), dtype=np.float32)
    boxes = np.zeros((len(scenes), num_boxes, 4), dtype=np.float32)
    targets = np.zeros((len(scenes), count, size, size), dtype=bool)
    for b, scene in enumerate(scenes):
        masks = scene.masks.numpy()
        passes = -(-count // len(masks))
        picks = np.concatenate([rng.permutation(len(masks)) for _ in range(passes)])[:count]
        targets[b] = masks[picks]
        for j, pick in enumerate(picks[:num_points]):
            ys, xs = np.nonzero(masks[pick])
            chosen = rng.integers(len(xs))
            points[b, j, 0] = (xs[chosen] + 0.5, ys[chosen] + 0.5)
        boxes[b] = scene.boxes.numpy()[picks[num_points:]]
    boxes = _jitter_boxes(boxes, noise=box_noise, size=size, rng=rng)
    prompts = Prompts(
        image_size=size,
        points=torch.from_numpy(points) if num_points else None,
        point_labels=torch.ones(len(scenes), num_points, 1, dtype=torch.long)
        if num_points
        else None,
        boxes=torch.from_numpy(boxes) if num_boxes else None,
    )
    return prompts, torch.from_numpy(targets)


def _jitter_boxes(
    boxes: np.ndarray, *, noise: float, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise on ``[B, Nb, 4]`` box corners, std ``noise`` x the box side (SAM's)."""
    side = np.concatenate([boxes[..., 2:] - boxes[..., :2]] * 2, axis=-1)
    noisy = np.clip(boxes + rng.standard_normal(boxes.shape) * noise * side, 0, size)
    low = np.minimum(noisy[..., :2], noisy[..., 2:])
    high = np.maximum(noisy[..., :2], noisy[..., 2:])
    return np.concatenate([low, high], axis=-1).astype(np.float32)


def scene_images(scenes: list[Scene]) -> Tensor:
    """``float [B, 3, S, S]`` in [0, 1], the images as every teacher receives them."""
    return torch.stack([scene.image for scene in scenes]).float() / 255


def sam_training_loss(
    sam: Sam, *, images: Tensor, prompts: Prompts, targets: Tensor, training: ToySamTraining
) -> tuple[Tensor, dict[str, float]]:
    """SAM's loss on one batch: focal + dice at the low-res output, and the IoU head's MSE.

    Args:
        images: ``[B, 3, S, S]`` in [0, 1].
        prompts: ``N`` prompts per image, pixels of ``S``.
        targets: ``bool [B, N, S, S]`` the mask each prompt asks for.

    Returns:
        The scalar loss and ``{"loss", "iou"}`` (mean IoU of the low-res masks) for display.
    """
    size = sam.image_encoder.img_size
    pixels = resize_and_normalize(
        images, size=size, mean=SamTeacher.pixel_mean, std=SamTeacher.pixel_std
    )
    embeddings = sam.image_encoder(pixels)
    logits, predicted_iou = decode_masks(
        prompt_encoder=sam.prompt_encoder,
        mask_decoder=sam.mask_decoder,
        image_embeddings=embeddings,
        prompts=prompts,
    )
    logits, predicted_iou = logits.flatten(0, 2), predicted_iou.flatten()  # K = 1
    # Area-averaged targets: a low-res pixel's target is the share of it the object covers.
    soft = F.interpolate(targets.flatten(0, 1).unsqueeze(1).float(), logits.shape[-2:], mode="area")
    soft, flat_logits = soft.flatten(1), logits.flatten(1)
    mask_loss = training.focal_weight * sigmoid_focal_loss(
        flat_logits, soft, alpha=training.focal_alpha, gamma=2.0
    ) + dice_loss(flat_logits, soft)
    with torch.no_grad():
        actual_iou = mask_iou(flat_logits > 0, soft > 0.5)
    iou_loss = F.mse_loss(predicted_iou, actual_iou)
    loss = mask_loss.mean() + training.iou_weight * iou_loss
    return loss, {"loss": loss.item(), "iou": actual_iou.mean().item()}


def train_toy_sam(
    *,
    sam_params: SamParams,
    training: ToySamTraining,
    world: ToyWorldConfig,
    output: Path,
    progress: bool = True,
) -> Path:
    """Train a SAM of ``sam_params``'s architecture on toy scenes and save its state dict.

    Args:
        sam_params: the architecture (its ``checkpoint`` field is ignored).
        training: steps, batch, prompts and optimiser settings.
        world: the toy world the scenes come from, at ``world.image_size``.
        output: where to write the checkpoint (``torch.save(sam.state_dict())``, SAM's format).
        progress: show a progress bar.

    Returns:
        ``output``.
    """
    sam, _ = fit_toy_sam(sam_params=sam_params, training=training, world=world, progress=progress)
    return save_atomically(sam.state_dict(), output)


def fit_toy_sam(
    *,
    sam_params: SamParams,
    training: ToySamTraining,
    world: ToyWorldConfig,
    progress: bool = True,
) -> tuple[Sam, list[float]]:
    """The training loop of :func:`train_toy_sam`: the trained ``Sam`` (in eval mode) and the
    loss of every step."""
    torch.manual_seed(training.seed)
    sam = build_untrained_sam(sam_params).train()
    if training.qk_init_gain is not None:
        align_decoder_attention(sam, gain=training.qk_init_gain)
    optimizer, schedule = sam_optimizer(sam, training)
    rng = np.random.default_rng([training.seed, 1])
    losses: list[float] = []
    with training_progress(
        total=training.steps, description="toy SAM", enabled=progress
    ) as advance:
        for step in range(training.steps):
            shown = sam_training_step(
                sam, optimizer, training=training, world=world, step=step, rng=rng
            )
            schedule.step()
            losses.append(shown["loss"])
            advance(**shown)
    return sam.eval(), losses


def sam_optimizer(
    sam: Sam, training: ToySamTraining
) -> tuple[torch.optim.Optimizer | Optimizers, torch.optim.lr_scheduler.LRScheduler | Schedules]:
    """``training``'s optimiser over all of ``sam`` and its warmup + cosine schedule."""
    build = muon_warmup_cosine if training.optimizer == "muon" else adamw_warmup_cosine
    return build(
        sam,
        lr=training.lr,
        weight_decay=training.weight_decay,
        warmup=training.warmup,
        steps=training.steps,
    )


def sam_training_step(
    sam: Sam,
    optimizer: torch.optim.Optimizer | Optimizers,
    *,
    training: ToySamTraining,
    world: ToyWorldConfig,
    step: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One optimiser step on scenes ``step * batch_size ...`` with freshly sampled prompts (the
    LR schedule is the caller's); returns :func:`sam_training_loss`'s display metrics."""
    num_boxes = round(training.prompts_per_image * training.box_fraction)
    scenes = scene_batch(
        world, seed=training.seed, start=step * training.batch_size, count=training.batch_size
    )
    prompts, targets = sample_prompts(
        scenes,
        num_points=training.prompts_per_image - num_boxes,
        num_boxes=num_boxes,
        box_noise=training.box_noise,
        rng=rng,
    )
    loss, shown = sam_training_loss(
        sam, images=scene_images(scenes), prompts=prompts, targets=targets, training=training
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return shown


@torch.no_grad()
def evaluate_toy_sam(
    teacher: SamTeacher,
    world: ToyWorldConfig,
    *,
    num_scenes: int = 100,
    seed: int = SAM_EVAL_SEED,
    point: Literal["random", "centre"] = "random",
    batch_size: int = 25,
) -> float:
    """Single positive point mIoU: one click inside every visible instance, the teacher's mask
    logits upsampled to the scene size and thresholded at 0, IoU with the instance's visible
    mask, averaged over all instances.

    Args:
        teacher: the SAM teacher as the merge uses it (its own resizing and normalization).
        world: the toy world; ``seed`` should differ from the training seed.
        num_scenes: scenes to evaluate (indices ``0..num_scenes-1`` of ``seed``).
        seed: the world seed of the evaluation scenes.
        point: ``"random"``, uniform inside the mask (as training and the prompt sampler draw
            them), or ``"centre"``, the point deepest inside the mask (SAM's protocol,
            Kirillov et al. 2023, sec. 7.1).
        batch_size: scenes per forward pass.
    """
    rng = np.random.default_rng([seed, 2])
    ious = []
    for start in range(0, num_scenes, batch_size):
        count = min(batch_size, num_scenes - start)
        scenes = scene_batch(world, seed=seed, start=start, count=count)
        counts = [int(scene.masks.shape[0]) for scene in scenes]
        prompts, targets = sample_prompts(
            scenes, num_points=max(counts), num_boxes=0, box_noise=0.0, rng=rng
        )
        if point == "centre":
            centres = interior_points(targets.flatten(0, 1)).view(*targets.shape[:2], 1, 2)
            prompts = Prompts(
                image_size=prompts.image_size, points=centres, point_labels=prompts.point_labels
            )
        logits = teacher(scene_images(scenes), targets=["mask_logits"], prompts=prompts)
        size = targets.shape[-1]
        upsampled = F.interpolate(
            logits["mask_logits"][:, :, 0], size=(size, size), mode="bilinear", align_corners=False
        )
        for b, objects in enumerate(counts):
            # The first ``objects`` prompts of a scene cover each instance once.
            ious.append(mask_iou(upsampled[b, :objects] > 0, targets[b, :objects]))
    return float(torch.cat(ious).mean())
