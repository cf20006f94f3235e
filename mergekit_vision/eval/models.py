"""The models under evaluation, each seen through the abilities it has.

- ``embed_images(images) -> [B, D]``: zero-shot classification (CLIP teacher, merged CLIP head);
- ``embed_patches(images) -> [B, h, w, D]``: dense zero-shot segmentation (CLIP teacher through
  MaskCLIP, merged CLIP head per token);
- ``encode(images)`` then ``mask_logits(encoded, prompts) -> [B, N, h, w]``: promptable segmentation
  (SAM teacher, merged SAM head);
- ``head_tokens(encoded)``, then ``embed_tokens(tokens) -> [B, h, w, D]`` (the patch embeddings) and
  ``embed_regions(tokens[i], regions) -> [N, D]``: an image embedding per region of one image (the
  merged CLIP head pooled over the region's tokens), to classify the SAM head's masks.

A model lacking an ability leaves the method out; :func:`abilities` says which it has.
Images are ``[B, 3, R, R]`` in [0, 1]; prompts are in pixels of that image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import Prompts, Teacher
from mergekit_vision.engine.build import Components, MergedModel
from mergekit_vision.sam.decoding import decode_masks

ABILITIES = ("embed_images", "embed_patches", "mask_logits")


def abilities(model: Any) -> set[str]:
    return {name for name in ABILITIES if callable(getattr(model, name, None))}


def teacher_eval(
    teacher: Teacher,
) -> ClipTeacherEval | SamTeacherEval | FeatureTeacherEval | DepthTeacherEval | None:
    """The teacher seen through what it offers: a text-aligned image encoder with a text tower
    (CLIP), a promptable mask decoder (SAM), features (DINOv2), a relative depth map (Depth
    Anything), or nothing ``vmerge eval`` measures yet."""
    targets = teacher.target_specs()
    text = callable(getattr(teacher, "encode_text", None))
    if (
        text
        and "image_embedding" in targets
        and callable(getattr(teacher, "dense_embeddings", None))
    ):
        return ClipTeacherEval(teacher)
    if "image_embeddings" in targets and "prompt_encoder" in teacher.component_names():
        return SamTeacherEval(teacher)
    if "summary" in targets or "spatial" in targets:
        return FeatureTeacherEval(teacher)
    if "depth" in targets:
        return DepthTeacherEval(teacher)
    return None


class DepthTeacherEval:
    """A depth teacher (Depth Anything): its ``depth`` target, a relative depth map per image;
    ``depth_space`` says whether the map holds disparity (relative inverse depth) or depth."""

    capabilities = frozenset({"depth"})

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.depth_space: str = getattr(teacher, "depth_space", "disparity")

    @torch.no_grad()
    def depth_maps(self, images: Tensor) -> Tensor:
        """``[B, 1, h, w]``."""
        return self.teacher(images, targets=["depth"])["depth"].float()


class FeatureTeacherEval:
    """A teacher whose ability is its features (DINOv2, RADIO): a ``summary`` vector and a
    ``spatial`` map, read by frozen-feature probes."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        targets = teacher.target_specs()
        self.capabilities = frozenset(
            name
            for name, target in (("summary", "summary"), ("dense", "spatial"))
            if target in targets
        )

    @torch.no_grad()
    def summary_features(self, images: Tensor) -> Tensor:
        return self.teacher(images, targets=["summary"])["summary"].float()

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        return self.teacher(images, targets=["spatial"])["spatial"].float()


class ClipTeacherEval:
    """A CLIP-like teacher: image embeddings, MaskCLIP patch embeddings, text embeddings."""

    capabilities = frozenset({"text_image_embedding", "text_dense_embedding", "summary", "dense"})

    def __init__(self, teacher: Teacher, *, target: str = "image_embedding"):
        self.teacher, self.target = teacher, target
        self.text_tower = self

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        out = self.teacher(images, targets=[self.target])[self.target]
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def embed_patches(self, images: Tensor) -> Tensor:
        return self.teacher.dense_embeddings(images)  # type: ignore[operator]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        return self.teacher.encode_text(texts)  # type: ignore[operator]

    @torch.no_grad()
    def summary_features(self, images: Tensor) -> Tensor:
        return self.teacher(images, targets=[self.target])[self.target].float()

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        return self.embed_patches(images).float().permute(0, 3, 1, 2)


class SamTeacherEval:
    """A SAM-like teacher: image embeddings once, then masks for any prompts.

    A teacher with a decoder of its own (SAM 2's reads high-resolution maps beside the image
    embedding) offers ``encode(images)`` and ``mask_logits(encoded, prompts, multimask_output=)``,
    used as they are; otherwise its SAM prompt encoder and mask decoder decode the image
    embeddings."""

    capabilities = frozenset({"promptable_masks", "summary", "dense"})

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        own = (getattr(teacher, name, None) for name in ("encode", "mask_logits"))
        self.decodes_itself = all(callable(method) for method in own)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Any:
        if self.decodes_itself:
            return self.teacher.encode(images)  # type: ignore[operator]
        return self.teacher(images, targets=["image_embeddings"])["image_embeddings"]

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        return self.teacher(images, targets=["image_embeddings"])["image_embeddings"].float()

    @torch.no_grad()
    def summary_features(self, images: Tensor) -> Tensor:
        """``[B, C]``: the image embeddings averaged over positions, as the merged backbone's
        summary is its tokens' mean (SAM has no class token)."""
        return self.dense_features(images).mean(dim=(2, 3))

    @torch.no_grad()
    def mask_logits(self, encoded: Any, prompts: Prompts) -> Tensor:
        if self.decodes_itself:
            own = self.teacher.mask_logits  # type: ignore[operator]
            return own(encoded, prompts, multimask_output=False)[:, :, 0]
        logits, _ = decode_masks(
            prompt_encoder=self.teacher.component("prompt_encoder"),
            mask_decoder=self.teacher.component("mask_decoder"),
            image_embeddings=encoded,
            prompts=prompts,  # decode_masks normalizes coordinates by prompts.image_size
        )
        return logits[:, :, 0]


class MergedEval:
    """The merged backbone with its CLIP head and SAM head.

    ``clip_task`` names the task that trained the CLIP head: when that task normalizes its
    targets, the head predicts normalized embeddings, and they are mapped back to the teacher's
    space (where its text embeddings live) before any comparison.
    """

    def __init__(
        self,
        model: MergedModel,
        *,
        clip_head: str | None,
        sam_head: str | None,
        clip_task: str | None = None,
    ):
        self.model = model.eval()
        self.clip_head = model.heads[clip_head] if clip_head is not None else None
        self.sam_head = model.heads[sam_head] if sam_head is not None else None
        found = {"summary", "dense"}  # the backbone's own tokens, for frozen-feature probes
        if self.clip_head is not None:
            found |= {"text_image_embedding", "text_dense_embedding"}
        if self.sam_head is not None:
            found.add("promptable_masks")
        if {"text_dense_embedding", "promptable_masks"} <= found:
            found.add("shared_encoder")
        self.capabilities = frozenset(found)
        self.text_tower: Any = None  # the text-aligned teacher of the CLIP head, set by the caller
        self.normalizer = model.normalizers[clip_task] if clip_task in model.normalizers else None

    def _in_teacher_space(self, embeddings: Tensor) -> Tensor:
        """``[..., D]`` head outputs -> the teacher's space, unit-normalized."""
        if self.normalizer is not None:
            embeddings = self.normalizer.inverse(embeddings)
        return F.normalize(embeddings.float(), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        features = self.model.student(images)
        (pooled,) = self.clip_head(features).values()
        return self._in_teacher_space(pooled)

    @torch.no_grad()
    def embed_patches(self, images: Tensor) -> Tensor:
        return self.embed_patches_from(self.encode(images))

    @torch.no_grad()
    def summary_features(self, images: Tensor) -> Tensor:
        """``[B, C]``: the student's tokens averaged over positions."""
        return self.encode(images).tokens.float().mean(dim=(1, 2))

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        """``[B, C, h, w]``: the student's last-block tokens."""
        return self.encode(images).tokens.float().permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Any:
        return self.model.student(images)

    @torch.no_grad()
    def embed_patches_from(self, features: Any) -> Tensor:
        return self._in_teacher_space(self.clip_head.dense_embeddings(features))

    @torch.no_grad()
    def head_tokens(self, features: Any) -> Tensor:
        """``[B, h, w, C]``: the CLIP head's blocks on the student's tokens, before pooling."""
        if not all(hasattr(self.clip_head, name) for name in ("encode_tokens", "pool", "embed")):
            raise ValueError(
                f"the CLIP head ({type(self.clip_head).__name__}) cannot pool a region's tokens "
                "(it has no encode_tokens, pool and embed); set eval.refined_mask_class: vote"
            )
        return self.clip_head.encode_tokens(features)

    @torch.no_grad()
    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Head tokens ``[..., C]`` (e.g. ``[B, h, w, C]``, or pooled ``[N, C]``) -> embeddings
        ``[..., D]`` in the teacher's space, unit-normalized."""
        return self._in_teacher_space(self.clip_head.embed(tokens))

    @torch.no_grad()
    def embed_regions(self, tokens: Tensor, regions: Tensor) -> Tensor:
        """``[N, D]``: the CLIP head's image embedding of each region ``bool [N, R, R]`` of one
        image, from its head tokens ``[h, w, C]``: the head's pooling over the tokens the region
        covers (at least half of a token, or its best-covered tokens when none is half
        covered)."""
        coverage = F.adaptive_avg_pool2d(regions.float()[:, None], tuple(tokens.shape[:2]))[:, 0]
        best = coverage.flatten(1).amax(dim=1).clamp(max=0.5)
        keep = coverage >= best[:, None, None]
        pooled = self.clip_head.pool(tokens.expand(len(regions), -1, -1, -1), keep)
        return self.embed_tokens(pooled)

    @torch.no_grad()
    def mask_logits(self, encoded: Any, prompts: Prompts) -> Tensor:
        (logits,) = self.sam_head(encoded, prompts=prompts).values()
        return logits[:, :, 0]


class MergedTeacherView:
    """The merged model as it stands in for one teacher: the heads that distil that teacher's
    feature targets, read as frozen features (AM-RADIO's adaptors, arXiv 2312.06709, are probed
    the same way). A vector target (``[B, D]``, e.g. CLIP's image embedding, DINO's class token)
    is the view's ``summary``; a map target (``[B, C, h, w]``) its ``dense`` features; a depth
    teacher's ``depth`` target its ``depth`` maps; predictions of a head trained on normalized
    targets are mapped back into the teacher's space.

    Args:
        model: the merged model.
        summary: ``(head, target, task)`` of the vector target, or None.
        dense: ``(head, target, task)`` of the map target, or None.
        depth: ``(head, target, task)`` of the depth target, or None.
        depth_space: what the depth teacher's maps hold (``disparity`` or ``depth``).
    """

    def __init__(
        self,
        model: MergedModel,
        *,
        summary: tuple[str, str, str] | None,
        dense: tuple[str, str, str] | None,
        depth: tuple[str, str, str] | None = None,
        depth_space: str = "disparity",
    ):
        self.model, self.summary, self.dense = model.eval(), summary, dense
        self.depth, self.depth_space = depth, depth_space
        sources = (("summary", summary), ("dense", dense), ("depth", depth))
        self.capabilities = frozenset(name for name, source in sources if source)

    def _predict(self, images: Tensor, source: tuple[str, str, str]) -> Tensor:
        head, target, task = source
        prediction = self.model.heads[head](self.model.student(images))[target]
        if task in self.model.normalizers:
            prediction = self.model.normalizers[task].denormalize(prediction)
        return prediction.float()

    @torch.no_grad()
    def summary_features(self, images: Tensor) -> Tensor:
        assert self.summary is not None
        return self._predict(images, self.summary)

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        assert self.dense is not None
        return self._predict(images, self.dense)

    @torch.no_grad()
    def depth_maps(self, images: Tensor) -> Tensor:
        assert self.depth is not None
        return self._predict(images, self.depth)


def teacher_views(components: Components, heads: list[str]) -> dict[str, MergedTeacherView]:
    """``{teacher: view}`` for every teacher the merged model distils a prompt-free feature
    target of through one of ``heads`` (the first vector and the first map target each), or the
    ``depth`` target of a depth teacher."""
    sources: dict[str, dict[str, tuple[str, str, str]]] = {}
    for name, task in components.tasks.items():
        spec = task.spec
        target = task.teacher.target_specs()[spec.target]
        if spec.head not in heads or target.needs_prompts:
            continue
        kind = "summary" if len(target.shape) == 2 else "dense" if len(target.shape) == 4 else None
        if spec.target == "depth":  # the depth teachers' target (teachers/depth.py)
            kind = "depth"
        if kind is not None:
            sources.setdefault(spec.teacher, {}).setdefault(kind, (spec.head, spec.target, name))
    return {
        teacher: MergedTeacherView(
            components.model,
            summary=found.get("summary"),
            dense=found.get("dense"),
            depth=found.get("depth"),
            depth_space=getattr(components.teachers[teacher], "depth_space", "disparity"),
        )
        for teacher, found in sources.items()
    }
