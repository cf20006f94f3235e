"""Train a tiny Depth Anything on toy-world depth maps, saved as a transformers folder.

The recipe is Depth Anything's supervised one (Yang et al., "Depth Anything", CVPR 2024, arXiv
2401.10891, sec. 3.1, after MiDaS, Ranftl et al., TPAMI 2022, arXiv 1907.01341), shrunk:
transformers' real ``DepthAnythingForDepthEstimation`` (a DINOv2 encoder and a DPT decoder)
trains from scratch on generated scenes to predict their disparity ``1 / depth`` with the
scale-and-shift-invariant ``ssi`` loss (:mod:`mergekit_vision.losses.ssi`, median alignment). So
the toy teacher is a relative-depth model like the real one: its map is disparity up to a scale
and a shift per image, which is what the ``depth`` teacher declares and the ``relative_depth``
metric aligns away. Scenes are drawn afresh every step (no epoch, no overfitting); the saved
folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json``) is what
``save_pretrained`` and transformers' image processor write, so the ``depth`` teacher, or
transformers itself, loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForDepthEstimation

from mergekit_vision.contracts import resize_and_normalize
from mergekit_vision.data.toy_world.world import Scene, ToyWorldConfig, generate_scene
from mergekit_vision.eval.measures.relative_depth import depth_errors
from mergekit_vision.losses.ssi import ScaleShiftInvariantLoss
from mergekit_vision.registry import PluginParams
from mergekit_vision.teachers.depth import PROCESSOR_FILE, DepthParams, DepthTeacher
from mergekit_vision.toy.fitting import (
    adamw_warmup_cosine,
    muon_warmup_cosine,
    save_folder_atomically,
    training_progress,
)

# Disjoint from the seeds evaluations use (0..999) and from the other toy teachers' seeds.
DEPTH_TRAIN_SEED = 4000
DEPTH_EVAL_SEED = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # Depth Anything's processor statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
_OUTPUT_BIAS = 1.0

TOY_DEPTH_CONFIG: dict[str, Any] = {
    "model_type": "depth_anything",
    "patch_size": 8,
    "backbone_config": {
        "model_type": "dinov2",
        "image_size": 64,
        "patch_size": 8,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "out_indices": [1, 2, 3, 4],
        "reshape_hidden_states": False,
    },
    "reassemble_hidden_size": 64,
    "reassemble_factors": [2, 1, 0.5, 0.25],
    "neck_hidden_sizes": [16, 32, 64, 64],
    "fusion_hidden_size": 32,
    "head_hidden_size": 16,
}
"""The toy Depth Anything: a 4-block, 64-wide DINOv2 at 64 px (8 x 8 patches of 8 px) under
Depth Anything's four-level DPT decoder, shrunk. The decoder's levels sit at 2, 1, 1/2 and 1/4
times the token grid (Depth Anything's: 4, 2, 1, 1/2): its convolutions at 4x cost 13x the
training time; the head still upsamples to the 64 px input."""


class ToyDepthTraining(PluginParams):
    """How the toy depth teacher trains (docs/toy-world.md gives what the defaults reach).

    Args:
        steps: optimiser steps.
        batch_size: scenes per step (each drawn once).
        optimizer: ``"adamw"`` (Depth Anything's), or ``"muon"``, Muon for the linear layers'
            weight matrices and AdamW for the rest
            (:func:`~mergekit_vision.toy.fitting.muon_warmup_cosine`); after 150 steps both
            scored delta1 0.88 on held-out scenes (AdamW at 1e-3, Muon at 2e-3).
        lr: peak learning rate.
        weight_decay: AdamW decay of weight matrices.
        warmup: linear warmup steps before the cosine decay.
        seed: the toy world's seed for training scenes; torch's init seed too.
    """

    steps: int = Field(default=800, ge=1)
    batch_size: int = Field(default=16, ge=1)
    optimizer: Literal["muon", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.05, ge=0.0)
    warmup: int = Field(default=20, ge=0)
    seed: int = Field(default=DEPTH_TRAIN_SEED, ge=0)


def toy_architecture(params: DepthParams) -> DepthParams:
    """``params`` with its ``config`` filled in (:data:`TOY_DEPTH_CONFIG` when it has none): the
    architecture the toy trains, and what its cache is keyed by."""
    if params.config is not None:
        return params
    return params.model_copy(update={"config": TOY_DEPTH_CONFIG})


def input_side(params: DepthParams) -> int:
    """The side images are resized to: ``image_size``, else the config's backbone's."""
    if params.image_size is not None:
        return params.image_size
    config = toy_architecture(params).config or {}
    size = config.get("image_size") or config.get("backbone_config", {}).get("image_size")
    if size is None:
        raise ValueError("toy depth teacher: its config names no image_size; give 'image_size'")
    return int(size)


def build_untrained_depth(params: DepthParams) -> nn.Module:
    """The ``AutoModelForDepthEstimation`` of ``params.config`` (default the toy's), random.

    The output convolution's bias starts at :data:`_OUTPUT_BIAS`. Depth Anything's map ends in a
    ReLU; from transformers' small random init its input is of order 1e-6, and within a few
    steps from scratch every pixel fell below 0, where the ReLU passes no gradient and the map
    stays 0 (the ``ssi`` loss then sits at 1). Started above 0, the map trains.
    """
    config = dict(toy_architecture(params).config or {})
    built = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModelForDepthEstimation.from_config(built)
    # DPT-style decoders (Depth Anything, DPT) register their output convolution last
    output = [module for module in model.modules() if isinstance(module, nn.Conv2d)][-1]
    with torch.no_grad():
        output.bias.fill_(_OUTPUT_BIAS)
    return model


def disparity_targets(scenes: list[Scene], *, size: int) -> Tensor:
    """``float [B, size, size]``: each scene's ``1 / depth``, area-averaged to ``size``."""
    disparity = 1 / torch.stack([scene.depth for scene in scenes]).unsqueeze(1)
    if disparity.shape[-1] != size:
        disparity = F.interpolate(disparity, size=(size, size), mode="area")
    return disparity.squeeze(1)


def scene_images(scenes: list[Scene]) -> Tensor:
    """``float [B, 3, S, S]`` in [0, 1]."""
    return torch.stack([scene.image for scene in scenes]).float() / 255


def fit_toy_depth(
    *,
    depth_params: DepthParams,
    training: ToyDepthTraining,
    world: ToyWorldConfig,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """The training loop: the trained model (in eval mode) and the loss of every step."""
    torch.manual_seed(training.seed)
    model = build_untrained_depth(depth_params).train()
    build = muon_warmup_cosine if training.optimizer == "muon" else adamw_warmup_cosine
    optimizer, schedule = build(
        model,
        lr=training.lr,
        weight_decay=training.weight_decay,
        warmup=training.warmup,
        steps=training.steps,
    )
    side = input_side(depth_params)
    mean, std = depth_params.mean or IMAGENET_MEAN, depth_params.std or IMAGENET_STD
    loss_fn = ScaleShiftInvariantLoss(alignment="median")
    losses: list[float] = []
    with training_progress(
        total=training.steps, description="toy depth", enabled=progress
    ) as advance:
        for step in range(training.steps):
            start = step * training.batch_size
            scenes = [
                generate_scene(world, seed=training.seed, index=index)
                for index in range(start, start + training.batch_size)
            ]
            pixels = resize_and_normalize(scene_images(scenes), size=side, mean=mean, std=std)
            predicted = model(pixel_values=pixels).predicted_depth
            target = disparity_targets(scenes, size=int(predicted.shape[-1]))
            loss = loss_fn(predicted.unsqueeze(1), target.unsqueeze(1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            advance(loss=losses[-1])
    return model.eval(), losses


def processor_config(params: DepthParams) -> dict[str, Any]:
    """transformers' ``DPTImageProcessor`` settings of the toy teacher: resize to the square
    input side (bilinear), rescale to [0, 1], normalize; the ``depth`` teacher reads the mean,
    std and side."""
    side = input_side(params)
    return {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": side, "width": side},
        "keep_aspect_ratio": False,
        "ensure_multiple_of": 1,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(params.mean or IMAGENET_MEAN),
        "image_std": list(params.std or IMAGENET_STD),
        "do_pad": False,
    }


def train_toy_depth(
    *,
    depth_params: DepthParams,
    training: ToyDepthTraining,
    world: ToyWorldConfig,
    output: Path,
    progress: bool = True,
) -> Path:
    """Train a depth model of ``depth_params``'s architecture on toy scenes and save it.

    Args:
        depth_params: the architecture (``config``, default :data:`TOY_DEPTH_CONFIG`), and the
            input side, mean and std when given; weight sources are ignored.
        training: steps, batch and optimiser settings.
        world: the toy world the scenes come from.
        output: the folder to write (``save_pretrained`` plus ``preprocessor_config.json``).
        progress: show a progress bar.

    Returns:
        ``output``.
    """
    model, _ = fit_toy_depth(
        depth_params=depth_params, training=training, world=world, progress=progress
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        (folder / PROCESSOR_FILE).write_text(json.dumps(processor_config(depth_params), indent=2))

    return save_folder_atomically(write, output)


@torch.no_grad()
def evaluate_toy_depth(
    teacher: DepthTeacher,
    world: ToyWorldConfig,
    *,
    num_scenes: int = 100,
    seed: int = DEPTH_EVAL_SEED,
    batch_size: int = 25,
) -> dict[str, float]:
    """AbsRel and delta1 (the ``relative_depth`` metric's protocol: per-image least-squares
    scale and shift in disparity, then depth errors) of the teacher's maps, upsampled bilinearly
    to the scene size, on scenes ``0..num_scenes-1`` of ``seed`` (unseen in training)."""
    scores = []
    for start in range(0, num_scenes, batch_size):
        indices = range(start, min(start + batch_size, num_scenes))
        scenes = [generate_scene(world, seed=seed, index=index) for index in indices]
        maps = teacher.depth_maps(scene_images(scenes)).float()
        size = world.image_size
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
        for prediction, scene in zip(maps[:, 0], scenes, strict=True):
            found = depth_errors(prediction, scene.depth, space=teacher.depth_space)
            if found is not None:
                scores.append(found)
    absrel, delta1 = np.mean(np.asarray(scores), axis=0).tolist()
    return {"absrel": absrel, "delta1": delta1}
