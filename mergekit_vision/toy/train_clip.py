"""Train a tiny open_clip ``CLIP`` on toy-world (image, caption) pairs, saved as open_clip saves.

Contrastive image-text pre-training (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021, arXiv 2103.00020) as open_clip's ``ClipLoss`` computes
it: symmetric InfoNCE over the batch with a learnable temperature (``logit_scale``, clamped at
100). Two changes fit the toy world:

- Multi-positive targets (as in SupCon, Khosla et al., NeurIPS 2020): with 24 classes a batch
  holds many scenes with the same content, and pushing those apart as negatives would fight the
  labels. Scenes whose canonical captions
  (:func:`~mergekit_vision.data.toy_world.world.describe`) match are
  each other's positives; each row's target spreads evenly over them.
- Single-object scenes are captioned with a random prompt template
  (:func:`~mergekit_vision.data.toy_world.world.caption_templates`), as web alt-text phrases one
  object in many ways, so zero-shot prompts like "a photo of a red circle." are in distribution.

Scenes are drawn at ``world.image_size`` and resized to the visual tower's size exactly as the
``open_clip`` teacher does at merge time. Each generated scene is reused for ``reuse`` steps on
average from a pool of recent scenes: generating scenes would otherwise cost as much as the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mergekit_vision.contracts import resize_and_normalize
from mergekit_vision.data.toy_world.world import (
    ToyWorldConfig,
    caption_templates,
    class_names,
    generate_scene,
)
from mergekit_vision.registry import PluginParams
from mergekit_vision.teachers.open_clip import OpenClipParams, OpenClipTeacher, create_clip
from mergekit_vision.toy.fitting import adamw_warmup_cosine, save_atomically, training_progress

# Disjoint from the seeds evaluations use (0..999), and from the SAM teacher's training seed.
CLIP_TRAIN_SEED = 2000
CLIP_EVAL_SEED = 11
_MAX_LOGIT_SCALE = 100.0  # open_clip clamps exp(logit_scale) here


class ToyClipTraining(PluginParams):
    """How the toy CLIP teacher trains. With the default world and architecture
    (:data:`~mergekit_vision.toy.teachers.TOY_CLIP`) the defaults reached zero-shot top-1 0.53
    over the 24 classes (colour always right, shape the errors) in 260-430 s on 2 shared cores.

    Args:
        steps: optimiser steps.
        batch_size: (image, caption) pairs per step.
        max_objects: scenes hold 1..max_objects objects.
        single_object_fraction: share of single-object scenes (the rest spread evenly over
            2..max_objects objects).
        reuse: average number of steps each generated scene is trained on; ``batch_size /
            reuse`` new scenes enter the pool per step.
        pool_size: recent scenes a batch is drawn from, in batches.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay of weight matrices (never of the token embedding table).
        warmup: linear warmup steps before the cosine decay.
        seed: the toy world's seed for training scenes; torch's init seed too.
    """

    steps: int = Field(default=800, ge=1)
    batch_size: int = Field(default=64, ge=2)
    max_objects: int = Field(default=3, ge=1)
    single_object_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    reuse: float = Field(default=4.0, ge=1.0)
    pool_size: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    warmup: int = Field(default=30, ge=0)
    seed: int = Field(default=CLIP_TRAIN_SEED, ge=0)


class CaptionTokens:
    """open_clip's tokenizer with a cache: captions repeat a lot in the toy world."""

    def __init__(self, *, tokenizer: Callable[[list[str]], Tensor]):
        self.tokenizer = tokenizer
        self._cache: dict[str, Tensor] = {}

    def __call__(self, captions: list[str]) -> Tensor:
        """``[T, L]`` token ids of ``captions``."""
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            self._cache.update(zip(missing, self.tokenizer(missing), strict=True))
        return torch.stack([self._cache[c] for c in captions])


class ScenePool:
    """Recent training scenes (already resized for the visual tower) and their captions.

    Each step adds ``fresh`` new scenes, evicting the oldest beyond ``capacity``, and a batch is
    drawn uniformly from the pool, so a scene is seen ``batch / fresh`` times on average.
    """

    def __init__(
        self, *, world: ToyWorldConfig, training: ToyClipTraining, image_size: int, fresh: int
    ):
        self.world, self.training, self.image_size = world, training, image_size
        self.fresh = fresh
        self.capacity = max(training.pool_size * training.batch_size, training.batch_size)
        self.images = torch.zeros(0, 3, image_size, image_size)
        self.keys: list[str] = []
        self.names: list[list[str]] = []
        self._next_index = 0
        self.rng = np.random.default_rng([training.seed, 3])

    def _add(self, count: int) -> None:
        counts = self._object_counts(count)
        images, keys, names = [], [], []
        for num_objects in counts:
            scene = generate_scene(
                self.world,
                seed=self.training.seed,
                index=self._next_index,
                num_objects=num_objects,
                object_centric=num_objects == 1,
            )
            self._next_index += 1
            images.append(scene.image)
            keys.append(scene.caption)
            names.append([obj.name for obj in scene.objects])
        resized = _resize(torch.stack(images).float() / 255, self.image_size)
        self.images = torch.cat([self.images, resized])[-self.capacity :]
        self.keys = (self.keys + keys)[-self.capacity :]
        self.names = (self.names + names)[-self.capacity :]

    def _object_counts(self, count: int) -> list[int]:
        many = self.rng.integers(2, max(self.training.max_objects, 2) + 1, size=count)
        single = self.rng.uniform(size=count) < self.training.single_object_fraction
        if self.training.max_objects == 1:
            single[:] = True
        return np.where(single, 1, many).tolist()

    def batch(self) -> tuple[Tensor, list[str], list[str]]:
        """Resized images ``[B, 3, R, R]`` in [0, 1], their captions, and their content keys."""
        if not self.keys:
            self._add(self.capacity)  # fill once so early batches are not all the same scenes
        else:
            self._add(self.fresh)
        picks = self.rng.choice(len(self.keys), size=self.training.batch_size, replace=False)
        templates = caption_templates()
        captions = []
        for pick in picks.tolist():
            names = self.names[pick]
            if len(names) == 1:
                template = templates[int(self.rng.integers(len(templates)))]
                captions.append(template.format(names[0]))
            else:
                captions.append(self.keys[pick])
        return self.images[torch.from_numpy(picks)], captions, [self.keys[p] for p in picks]


def _resize(images: Tensor, size: int) -> Tensor:
    """``[B, 3, S, S]`` -> ``[B, 3, size, size]``, the resize of ``Teacher.prepare``."""
    return resize_and_normalize(images, size=size, mean=(0.0,) * 3, std=(1.0,) * 3)


def multi_positive_clip_loss(
    image_features: Tensor, text_features: Tensor, *, logit_scale: Tensor, keys: list[str]
) -> Tensor:
    """Symmetric InfoNCE (CLIP's loss) where pairs with equal ``keys`` are all positives.

    Args:
        image_features: ``[B, D]`` L2-normalized.
        text_features: ``[B, D]`` L2-normalized, row ``i`` the caption of image ``i``.
        logit_scale: scalar, ``exp`` of the learnable log inverse temperature.
        keys: ``B`` content keys; equal keys mean the same scene content.
    """
    logits = logit_scale * image_features @ text_features.T
    _, key_ids = np.unique(np.asarray(keys), return_inverse=True)
    ids = torch.from_numpy(key_ids.reshape(-1))
    positives = (ids[:, None] == ids[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    # ``positives`` is symmetric, so the same targets serve both directions.
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_toy_clip(
    *,
    clip_params: OpenClipParams,
    training: ToyClipTraining,
    world: ToyWorldConfig,
    output: Path,
    progress: bool = True,
) -> Path:
    """Train an open_clip model of ``clip_params``'s architecture on toy scenes and save it.

    Args:
        clip_params: the architecture (``model`` + ``model_cfg``; ``checkpoint`` is ignored).
        training: steps, batch and optimiser settings.
        world: the toy world the scenes come from.
        output: where to write ``torch.save(model.state_dict())`` (open_clip's ``.bin`` format).
        progress: show a progress bar.

    Returns:
        ``output``.
    """
    clip, _ = fit_toy_clip(
        clip_params=clip_params, training=training, world=world, progress=progress
    )
    return save_atomically(clip.state_dict(), output)


def fit_toy_clip(
    *,
    clip_params: OpenClipParams,
    training: ToyClipTraining,
    world: ToyWorldConfig,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """The training loop of :func:`train_toy_clip`: the trained model (in eval mode) and the
    loss of every step."""
    torch.manual_seed(training.seed)
    clip, name = create_clip(clip_params)
    clip.train()
    tokens = CaptionTokens(tokenizer=open_clip_tokenizer(name))
    preprocess = clip.visual.preprocess_cfg
    mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)
    pool = ScenePool(
        world=world,
        training=training,
        image_size=_visual_size(clip),
        fresh=max(1, round(training.batch_size / training.reuse)),
    )
    optimizer, schedule = adamw_warmup_cosine(
        clip,
        lr=training.lr,
        weight_decay=training.weight_decay,
        warmup=training.warmup,
        steps=training.steps,
        betas=(0.9, 0.98),  # CLIP's
        no_decay=(clip.token_embedding.weight,),
    )
    losses: list[float] = []
    with training_progress(
        total=training.steps, description="toy CLIP", enabled=progress
    ) as advance:
        for _ in range(training.steps):
            images, captions, keys = pool.batch()
            image_features = clip.encode_image((images - mean) / std, normalize=True)
            text_features = clip.encode_text(tokens(captions), normalize=True)
            loss = multi_positive_clip_loss(
                image_features, text_features, logit_scale=clip.logit_scale.exp(), keys=keys
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, np.log(_MAX_LOGIT_SCALE))
            losses.append(loss.item())
            advance(loss=losses[-1], scale=clip.logit_scale.exp().item())
    return clip.eval(), losses


def open_clip_tokenizer(name: str) -> Callable[[list[str]], Tensor]:
    """open_clip's tokenizer for model ``name`` (for these configs its BPE ``SimpleTokenizer``)."""
    import open_clip

    return open_clip.get_tokenizer(name)


def _visual_size(clip: nn.Module) -> int:
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


@torch.no_grad()
def zero_shot_classifier(teacher: OpenClipTeacher, world: ToyWorldConfig) -> Tensor:
    """``[C, D]`` class embeddings: each class's prompts over :func:`caption_templates`,
    embedded, averaged and re-normalized (CLIP's prompt ensembling)."""
    templates = caption_templates()
    names = class_names(world)
    prompts = [template.format(name) for name in names for template in templates]
    embeddings = teacher.encode_text(prompts).reshape(len(names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


@torch.no_grad()
def evaluate_toy_clip(
    teacher: OpenClipTeacher,
    world: ToyWorldConfig,
    *,
    num_scenes: int = 240,
    seed: int = CLIP_EVAL_SEED,
    batch_size: int = 120,
) -> float:
    """Zero-shot top-1 over the world's classes on single-object scenes, classes balanced
    (scene ``i`` shows class ``i mod C``), with template-ensembled class prompts.

    Args:
        teacher: the CLIP teacher as the merge uses it (its own resizing and normalization).
        world: the toy world; ``seed`` should differ from the training seed.
        num_scenes: scenes to classify.
        seed: the world seed of the evaluation scenes.
        batch_size: scenes per forward pass.
    """
    classifier = zero_shot_classifier(teacher, world)
    correct = 0
    for start in range(0, num_scenes, batch_size):
        indices = range(start, min(start + batch_size, num_scenes))
        labels = torch.tensor([i % world.num_classes for i in indices])
        scenes = [
            generate_scene(world, seed=seed, index=i, classes=[int(label)], object_centric=True)
            for i, label in zip(indices, labels, strict=True)
        ]
        images = torch.stack([scene.image for scene in scenes]).float() / 255
        embedding = teacher(images, targets=["image_embedding"])["image_embedding"]
        correct += int(((embedding @ classifier.T).argmax(dim=1) == labels).sum())
    return correct / num_scenes
