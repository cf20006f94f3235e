"""The baseline a user would otherwise build: SAM's masks, each crop classified by CLIP.

SAM-CLIP (arXiv 2310.15308, table 4) compares against this "SAM-then-CLIP" pipeline: SAM
segments everything from a grid of point prompts (as SAM's automatic mask generator does), and
the CLIP teacher labels every mask from a crop around it with the outside of the mask blanked.
Both teachers run in full, plus one CLIP forward per mask: that is its cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.eval.models import ClipTeacherEval, SamTeacherEval
from mergekit_vision.eval.tasks import LOGIT_SCALE


class SamThenClip:
    """Semantic segmentation from the two teachers run one after the other."""

    def __init__(
        self,
        *,
        sam: SamTeacherEval,
        clip: ClipTeacherEval,
        texts: Tensor,
        grid: int = 8,
        min_score: float = 0.8,
        nms_iou: float = 0.7,
        min_area: int = 16,
    ):
        """
        Args:
            sam, clip: the teachers.
            texts: ``[K, D]`` class text embeddings.
            grid: ``grid x grid`` point prompts per image.
            min_score: masks whose mean foreground probability is lower are dropped.
            nms_iou: a mask overlapping a better one more than this is dropped.
            min_area: masks smaller than this many pixels are dropped.
        """
        self.sam, self.clip, self.texts = sam, clip, texts
        self.grid, self.min_score, self.nms_iou, self.min_area = grid, min_score, nms_iou, min_area

    @torch.no_grad()
    def prepare(self, images: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image, the threshold-independent work: SAM's masks ``bool [M, R, R]`` and CLIP's
        confidence and class for each (see :class:`~mergekit_vision.eval.tasks.Segmenter`)."""
        return [self._classified_masks(image) for image in images]

    def labels(
        self, prepared: list[tuple[Tensor, Tensor, Tensor]], thresholds: Sequence[float]
    ) -> list[Tensor]:
        """``[B, R, R]`` per threshold: each mask whose CLIP confidence reaches the threshold
        painted with its class, small masks last (on top); the rest is background."""
        return [torch.stack([_paint(*one, t) for one in prepared]) for t in thresholds]

    def _classified_masks(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        masks = self._masks(image[None])
        if masks.shape[0] == 0:
            empty = torch.zeros(0)
            return masks, empty, empty.long()
        embeddings = self.clip.embed_images(_crops(image, masks))
        probs = (LOGIT_SCALE * embeddings @ self.texts.T).softmax(-1)
        confidence, classes = probs.max(-1)
        return masks, confidence, classes

    def _masks(self, images: Tensor) -> Tensor:
        """``bool [M, R, R]``: SAM's confident, de-duplicated masks for a grid of points."""
        size = images.shape[-1]
        steps = (torch.arange(self.grid) + 0.5) * size / self.grid
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        points = torch.stack([xs.flatten(), ys.flatten()], -1)[None, :, None]
        prompts = Prompts(size, points, torch.ones(points.shape[:3], dtype=torch.long))
        logits = self.sam.mask_logits(self.sam.encode(images), prompts)[0]
        logits = F.interpolate(logits[None], size=(size, size), mode="bilinear")[0]
        masks = logits > 0
        area = masks.flatten(1).sum(1)
        probs = torch.sigmoid(logits)
        score = (probs * masks).flatten(1).sum(1) / area.clamp(min=1)
        keep = (area >= self.min_area) & (score >= self.min_score)
        return _mask_nms(masks[keep], score[keep], self.nms_iou)


def _paint(masks: Tensor, confidence: Tensor, classes: Tensor, threshold: float) -> Tensor:
    labels = torch.zeros(masks.shape[-2:], dtype=torch.long)
    order = masks.flatten(1).sum(1).argsort(descending=True)  # small masks painted last, on top
    for index in order.tolist():
        if confidence[index] >= threshold:
            labels[masks[index]] = int(classes[index]) + 1
    return labels


def _mask_nms(masks: Tensor, scores: Tensor, iou: float) -> Tensor:
    kept: list[int] = []
    flat = masks.flatten(1).float()
    for index in scores.argsort(descending=True).tolist():
        if kept:
            inter = flat[kept] @ flat[index]
            union = flat[kept].sum(1) + flat[index].sum() - inter
            if (inter / union.clamp(min=1)).max() > iou:
                continue
        kept.append(index)
    return masks[kept]


def _crops(image: Tensor, masks: Tensor) -> Tensor:
    """``[M, 3, S, S]``: the box around each mask, outside the mask set to grey, made square."""
    crops = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        side = max(y1 - y0, x1 - x0)
        blanked = torch.where(mask, image, torch.full_like(image, 0.5))[:, y0:y1, x0:x1]
        pad = (0, side - (x1 - x0), 0, side - (y1 - y0))
        crops.append(F.pad(blanked, pad, value=0.5))
    side = image.shape[-1]
    return torch.stack(
        [F.interpolate(c[None], size=(side, side), mode="bilinear")[0] for c in crops]
    )


class TwoTeacherPipeline:
    """The pipeline as an evaluated model: a promptable teacher and a text-aligned teacher."""

    capabilities = frozenset({"mask_then_classify"})

    def __init__(self, *, sam: SamTeacherEval, clip: ClipTeacherEval, grid: int):
        self.sam, self.clip, self.grid = sam, clip, grid
        self.text_tower = clip

    def pipeline(self, texts: Tensor) -> SamThenClip:
        return SamThenClip(sam=self.sam, clip=self.clip, texts=texts, grid=self.grid)
