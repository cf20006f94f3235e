"""Prompt sampling for SAM distillation.

Follows the prompt simulation of SAM's training (Kirillov et al. 2023, "Segment Anything", sec. 3
and appendix A): a point prompt is a foreground click drawn uniformly inside an instance mask; a box
prompt is the mask's bounding box with Gaussian noise on each coordinate, of standard deviation
``box_noise`` times the box's side (SAM uses 10% and also caps the noise at 20 px at 1024 px; the
cap is left out here so the rule is resolution-free).

Two sources of masks:
- ``ground_truth``: a dataset's instance masks (SA-1B, COCO) via :meth:`PromptSampler.from_masks`;
- ``teacher``: for images without masks, random points first (:meth:`PromptSampler.random_points`),
  then boxes of the masks the SAM teacher predicts for some of those points
  (:meth:`PromptSampler.boxes_from_teacher_masks`). A plain folder of images is thus enough.

All randomness comes from the ``torch.Generator`` passed in, so the same generator state gives the
same prompts. Sampling runs on the CPU (draws happen on the generator's device, so a CUDA
generator works too) and the prompts land on the device of the masks or teacher logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.recipe.task_params import PromptSamplerParams

# Side of the box put around a point whose teacher mask is empty, as a fraction of the image.
_FALLBACK_BOX_FRACTION = 0.1


class PromptSampler:
    """Samples ``points_per_image`` point and ``boxes_per_image`` box prompts per image."""

    def __init__(self, *, points_per_image: int, boxes_per_image: int, box_noise: float = 0.1):
        """
        Args:
            points_per_image: single-click foreground point prompts per image (``Np``).
            boxes_per_image: box prompts per image (``Nb``).
            box_noise: std of the box-corner noise as a fraction of the box's side length.
        """
        if points_per_image < 0 or boxes_per_image < 0 or points_per_image + boxes_per_image == 0:
            raise ValueError(
                "PromptSampler needs at least one prompt per image; got "
                f"points_per_image={points_per_image}, boxes_per_image={boxes_per_image}"
            )
        self.points_per_image, self.boxes_per_image = points_per_image, boxes_per_image
        self.box_noise = box_noise

    @classmethod
    def build(cls, params: PromptSamplerParams) -> PromptSampler:
        return cls(
            points_per_image=params.points_per_image,
            boxes_per_image=params.boxes_per_image,
            box_noise=params.box_noise,
        )

    def from_masks(
        self, masks: list[Tensor], *, image_size: int, generator: torch.Generator
    ) -> Prompts:
        """Prompts from instance masks, one image at a time.

        Each prompt picks one of the image's non-empty masks; every mask is used once before any
        is reused. Images with no non-empty mask get uniformly random points and boxes between two
        random corners instead (the engine sends mask-less datasets down the teacher path, so this
        only covers the odd unannotated image).

        Args:
            masks: per image ``bool [M_i, R, R]``, on a square grid covering the whole image.
            image_size: side of the image the prompts are for (``R`` or a multiple of it).
            generator: the only source of randomness.

        Returns:
            points ``[B, Np, 1, 2]``, labels ``[B, Np, 1]`` (all 1), boxes ``[B, Nb, 4]``.
        """
        device = masks[0].device if masks else torch.device("cpu")
        points, boxes = [], []
        for image_masks in masks:
            points_i, boxes_i = self._sample_image(image_masks.cpu(), image_size, generator)
            points.append(points_i)
            boxes.append(boxes_i)
        points_t = torch.stack(points) if points else torch.zeros(0, self.points_per_image, 2)
        boxes_t = torch.stack(boxes) if boxes else torch.zeros(0, self.boxes_per_image, 4)
        boxes_t = self._jitter(boxes_t, image_size=image_size, generator=generator)
        return self._prompts(points_t.to(device), boxes_t.to(device), image_size=image_size)

    def _sample_image(
        self, masks: Tensor, image_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Points ``[Np, 2]`` and un-jittered boxes ``[Nb, 4]`` for one image's ``[M, R, R]``."""
        boxes, present = _mask_boxes(masks)
        valid = torch.nonzero(present).squeeze(1)
        if valid.numel() == 0:
            points = _uniform(generator, (self.points_per_image, 2)) * image_size
            return points, _random_boxes(self.boxes_per_image, image_size, generator)
        scale = image_size / masks.shape[-1]
        picks = valid[_cycle_choice(valid.numel(), self.points_per_image, generator)]
        points = _points_inside(masks, picks=picks, boxes=boxes, generator=generator) * scale
        picks = valid[_cycle_choice(valid.numel(), self.boxes_per_image, generator)]
        return points, boxes[picks] * scale

    def random_points(
        self, batch_size: int, *, image_size: int, generator: torch.Generator
    ) -> Prompts:
        """``Np + Nb`` foreground points per image, uniform over the image: ``[B, Np+Nb, 1, 2]``.

        The first step of the teacher path; :meth:`boxes_from_teacher_masks` turns the last
        ``Nb`` of them into boxes.
        """
        count = self.points_per_image + self.boxes_per_image
        points = _uniform(generator, (batch_size, count, 1, 2)) * image_size
        labels = torch.ones(batch_size, count, 1, dtype=torch.long)
        return Prompts(image_size=image_size, points=points, point_labels=labels)

    def boxes_from_teacher_masks(
        self, point_prompts: Prompts, teacher_mask_logits: Tensor, *, generator: torch.Generator
    ) -> Prompts:
        """Keep the first ``Np`` random points; box the teacher's masks for the last ``Nb``.

        For each of those points one of the teacher's ``K`` candidate masks is drawn at random
        (SAM's multimask outputs are sub-part, part and whole object, so boxes span all three
        granularities). Its box, from the logits ``> 0``, is rescaled from the mask grid to
        ``image_size`` and jittered like ground-truth boxes; an empty mask gives a box of side
        ``image_size / 10`` centred on the point.

        Args:
            point_prompts: from :meth:`random_points`, points ``[B, Np+Nb, 1, 2]``.
            teacher_mask_logits: ``[B, Np+Nb, K, h, w]`` for those points, the grid covering the
                whole square image.
            generator: the only source of randomness.
        """
        points = point_prompts.points
        n_p, n_b = self.points_per_image, self.boxes_per_image
        if points is None or points.shape[1] != n_p + n_b:
            raise ValueError(f"expected {n_p + n_b} point prompts per image from random_points()")
        if teacher_mask_logits.shape[:2] != points.shape[:2]:
            raise ValueError(
                f"teacher_mask_logits {tuple(teacher_mask_logits.shape)} do not match the "
                f"points {tuple(points.shape)}: expected [B, Np+Nb, K, h, w]"
            )
        image_size = point_prompts.image_size
        batch, _, k, h, w = teacher_mask_logits.shape
        device = teacher_mask_logits.device
        which = (_uniform(generator, (batch, n_b)) * k).long().clamp_max(k - 1).to(device)
        rows = torch.arange(batch, device=device).unsqueeze(1)
        cols = torch.arange(n_p, n_p + n_b, device=device).unsqueeze(0)
        picked = teacher_mask_logits[rows, cols, which]  # [B, Nb, h, w]
        boxes, present = _mask_boxes(picked > 0)
        boxes = boxes * torch.tensor([image_size / w, image_size / h] * 2, device=boxes.device)
        centre = points[:, n_p:, 0].to(boxes.device)
        half = _FALLBACK_BOX_FRACTION * image_size / 2
        fallback = torch.cat([centre - half, centre + half], dim=-1)
        boxes = torch.where(present.unsqueeze(-1), boxes, fallback)
        boxes = self._jitter(boxes, image_size=image_size, generator=generator)
        return self._prompts(points[:, :n_p, 0].to(device), boxes, image_size=image_size)

    def _jitter(self, boxes: Tensor, *, image_size: int, generator: torch.Generator) -> Tensor:
        """Noise on ``[B, Nb, 4]`` boxes (std ``box_noise`` x side), clipped and re-ordered."""
        if self.box_noise > 0 and boxes.numel():
            side = boxes[..., 2:] - boxes[..., :2]
            noise = torch.randn(boxes.shape, generator=generator, device=generator.device)
            boxes = boxes + noise.to(boxes.device) * self.box_noise * torch.cat([side, side], -1)
        boxes = boxes.clamp(0, image_size)
        low = torch.minimum(boxes[..., :2], boxes[..., 2:])
        high = torch.maximum(boxes[..., :2], boxes[..., 2:])
        return torch.cat([low, high], dim=-1)

    def _prompts(self, points: Tensor, boxes: Tensor, *, image_size: int) -> Prompts:
        """Pack ``[B, Np, 2]`` points and ``[B, Nb, 4]`` boxes, leaving out empty kinds."""
        has_points, has_boxes = self.points_per_image > 0, self.boxes_per_image > 0
        return Prompts(
            image_size=image_size,
            points=points.float().unsqueeze(2) if has_points else None,
            point_labels=(
                torch.ones(points.shape[:2] + (1,), dtype=torch.long, device=points.device)
                if has_points
                else None
            ),
            boxes=boxes.float() if has_boxes else None,
        )


def _uniform(generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """``U[0, 1)`` on the CPU, drawn on the generator's own device (CPU or CUDA generators)."""
    return torch.rand(shape, generator=generator, device=generator.device).cpu()


def _cycle_choice(available: int, needed: int, generator: torch.Generator) -> Tensor:
    """``needed`` indices into ``available`` items: shuffled passes over all of them, cut short."""
    passes = -(-needed // available)
    order = [
        torch.randperm(available, generator=generator, device=generator.device).cpu()
        for _ in range(passes)
    ]
    return torch.cat(order)[:needed] if order else torch.zeros(0, dtype=torch.long)


def _points_inside(
    masks: Tensor, *, picks: Tensor, boxes: Tensor, generator: torch.Generator
) -> Tensor:
    """Pixel-centre points ``(x, y)`` ``[N, 2]``, one drawn uniformly inside each picked mask.

    Args:
        masks: ``bool [M, R, R]``.
        picks: ``[N]`` indices of non-empty masks (repeats allowed).
        boxes: ``[M, 4]`` the masks' tight boxes; only the box's pixels are scanned, which for
            the small objects that dominate SA-1B is a fraction of the image.
    """
    ranks = _uniform(generator, (picks.numel(),))
    points = []
    for mask_index, u in zip(picks.tolist(), ranks.tolist(), strict=True):
        x0, y0, x1, y1 = (int(v) for v in boxes[mask_index].tolist())
        cumulative = masks[mask_index, y0:y1, x0:x1].flatten().cumsum(0, dtype=torch.int32)
        count = int(cumulative[-1])
        # The j-th foreground pixel (0-based) is the first whose cumulative count reaches j + 1.
        rank = min(int(u * count), count - 1) + 1
        index = int(torch.searchsorted(cumulative, torch.tensor([rank], dtype=torch.int32)))
        points.append((x0 + index % (x1 - x0) + 0.5, y0 + index // (x1 - x0) + 0.5))
    return torch.tensor(points, dtype=torch.float32).reshape(-1, 2)


def _mask_boxes(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Tight pixel-edge boxes ``(x0, y0, x1, y1)`` of ``bool [..., h, w]`` masks, and which are
    non-empty ``[...]`` (empty masks get all-zero boxes)."""
    as_bytes = masks.view(torch.uint8)  # max-reducing bytes is several times faster than any()
    rows, cols = as_bytes.amax(dim=-1), as_bytes.amax(dim=-2)
    h, w = rows.shape[-1], cols.shape[-1]
    y0 = rows.argmax(dim=-1)
    y1 = h - rows.flip(-1).argmax(dim=-1)
    x0 = cols.argmax(dim=-1)
    x1 = w - cols.flip(-1).argmax(dim=-1)
    present = rows.amax(dim=-1) > 0
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    return boxes * present.unsqueeze(-1), present


def _random_boxes(count: int, image_size: int, generator: torch.Generator) -> Tensor:
    """``[count, 4]`` boxes spanned by two uniformly random corners."""
    corners = _uniform(generator, (count, 2, 2)) * image_size
    return torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=-1)
