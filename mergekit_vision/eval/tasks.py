"""The measurements: zero-shot classification, promptable segmentation (with COCO mask AP), and
zero-shot semantic segmentation from patch embeddings, optionally refined by promptable masks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mergekit_vision.contracts import Prompts
from mergekit_vision.data.base import collate_samples
from mergekit_vision.eval.metrics import (
    ConfusionMatrix,
    coco_mask_ap,
    dense_semseg_from_embeddings,
    mask_iou,
    top1_accuracy,
)

LOGIT_SCALE = 100.0  # CLIP's learned temperature saturates at 100; used for class probabilities
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def batches(dataset: Dataset, *, batch_size: int, start: int = 0, stop: int | None = None):
    """Batches of ``dataset[start:stop]`` with images as floats in [0, 1]."""
    indices = list(range(start, len(dataset) if stop is None else min(stop, len(dataset))))
    subset = torch.utils.data.Subset(dataset, indices)
    for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate_samples):
        batch["image"] = batch["image"].float() / 255.0
        yield batch


@torch.no_grad()
def class_text_embeddings(text_model: Any, class_names: list[str], templates: list[str]) -> Tensor:
    """``[K, D]``: each class's prompt embeddings averaged over templates (CLIP, Radford 2021)."""
    rows = []
    for name in class_names:
        embedded = text_model.embed_texts([t.format(name) for t in templates])
        rows.append(F.normalize(embedded.float().mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_top1(model: Any, dataset: Dataset, texts: Tensor, *, batch_size: int) -> float:
    logits, labels = [], []
    for batch in batches(dataset, batch_size=batch_size):
        logits.append(model.embed_images(batch["image"]) @ texts.T)
        labels.append(batch["label"])
    return top1_accuracy(torch.cat(logits), torch.cat(labels))


def interior_points(masks: Tensor) -> Tensor:
    """The pixel centre ``(x, y)`` deepest inside each mask: SAM's evaluation click (Kirillov et
    al. 2023, sec. 7.1, after RITM's protocol), the maximum of the distance to the background,
    found by repeated 3x3 erosion with the image border counting as background; of the deepest
    pixels, the middle one in raster order.

    Args:
        masks: ``bool [N, H, W]``, non-empty.

    Returns:
        ``float [N, 2]``.
    """
    current = masks.unsqueeze(1).float()
    deepest = current
    while bool(current.any()):
        alive = current.flatten(1).any(dim=1).view(-1, 1, 1, 1)
        deepest = torch.where(alive, current, deepest)
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), kernel_size=3, stride=1)
    flat = deepest.flatten(1)
    middle = flat.sum(dim=1, keepdim=True) // 2  # rank of the middle deepest pixel
    index = (flat.cumsum(dim=1) > middle).float().argmax(dim=1)
    width = masks.shape[-1]
    return torch.stack([index % width, index // width], dim=1).float() + 0.5


def _upsampled_masks(logits: Tensor, size: int) -> Tensor:
    """``[N, h, w]`` mask logits -> ``[N, size, size]`` logits."""
    return F.interpolate(logits[None].float(), size=(size, size), mode="bilinear")[0]


@torch.no_grad()
def promptable_segmentation(
    model: Any, dataset: Dataset, *, max_prompts: int, batch_size: int = 16
) -> dict[str, float]:
    """Single-point and box-prompted mask IoU against each instance, and box-prompted mask AP.

    Images are encoded ``batch_size`` at a time, and each one's prompts decoded on its own (the
    images have different numbers of instances)."""
    point_ious, box_ious, gts, predictions, sizes = [], [], [], [], {}
    image_id = -1
    for batch in batches(dataset, batch_size=batch_size):
        size = batch["image"].shape[-1]
        encoded = model.encode(batch["image"])
        for index, all_masks in enumerate(batch["masks"]):
            image_id += 1
            masks = all_masks[:max_prompts]
            if masks.shape[0] == 0:
                continue
            one = _select(encoded, index)
            points = interior_points(masks)[None, :, None]
            point_prompts = Prompts(size, points, torch.ones(points.shape[:3], dtype=torch.long))
            predicted = _upsampled_masks(model.mask_logits(one, point_prompts)[0], size) > 0
            point_ious.append(mask_iou(predicted, masks))
            box_prompts = Prompts(size, boxes=_boxes(masks))
            box_logits = _upsampled_masks(model.mask_logits(one, box_prompts)[0], size)
            box_ious.append(mask_iou(box_logits > 0, masks))
            sizes[image_id] = (size, size)
            for mask, logit in zip(masks, box_logits, strict=True):
                gts.append({"image_id": image_id, "category_id": 1, "mask": mask.numpy()})
                positive = logit > 0
                score = float(torch.sigmoid(logit[positive]).mean()) if positive.any() else 0.0
                predictions.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "mask": positive.numpy(),
                        "score": score,
                    }
                )
    ap = coco_mask_ap(gts, predictions, image_sizes=sizes)
    return {
        "prompt_seg_miou": float(torch.cat(point_ious).mean()),
        "prompt_seg_miou_box": float(torch.cat(box_ious).mean()),
        "mask_ap": ap["AP"],
        "mask_ap50": ap["AP50"],
    }


def _boxes(masks: Tensor) -> Tensor:
    """``[1, M, 4]`` xyxy pixel boxes of ``bool [M, H, W]`` masks."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    return torch.stack(boxes)[None]


Labeler = Callable[[Any, Sequence[float]], list[Tensor]]
MaskClass = Literal["pooled", "vote"]


@dataclass(frozen=True)
class Segmenter:
    """Zero-shot semantic segmentation in two stages, so calibrating the background threshold
    runs the models once per image: ``prepare(images)`` does the work that does not depend on the
    threshold (encoders, masks, crop classes), ``labels(prepared, thresholds)`` the rest, giving
    one ``[B, R, R]`` label map (0 = background) per threshold. Calling it does both."""

    prepare: Callable[[Tensor], Any]
    labels: Labeler

    def __call__(self, images: Tensor, threshold: float) -> Tensor:
        return self.labels(self.prepare(images), [threshold])[0]


def semantic_segmentation(
    prepare: Callable[[Tensor], Any],
    labelers: dict[str, Labeler],
    dataset: Dataset,
    *,
    num_classes: int,
    calibration: int,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """mIoU of each of ``labelers`` on ``dataset``, all reading one ``prepare`` per batch (as a
    model's CLIP-head and refined segmentations read one encoder pass).

    Each labeler's background threshold is the one of :data:`THRESHOLDS` with the best mIoU on
    the first ``calibration`` images (prepared once, labelled at every threshold at once); the
    mIoU reported is on the others.
    """
    thresholds = dict.fromkeys(labelers, 0.5)
    if calibration > 0:
        confusions = {name: [_confusion(num_classes) for _ in THRESHOLDS] for name in labelers}
        for batch in batches(dataset, batch_size=batch_size, stop=calibration):
            prepared = prepare(batch["image"])
            for name, labels in labelers.items():
                for confusion, predicted in zip(
                    confusions[name], labels(prepared, THRESHOLDS), strict=True
                ):
                    confusion.update(predicted, batch["semantic"])
        for name, matrices in confusions.items():
            scores = [matrix.miou() for matrix in matrices]
            thresholds[name] = THRESHOLDS[scores.index(max(scores))]
    scored = {name: _confusion(num_classes) for name in labelers}
    for batch in batches(dataset, batch_size=batch_size, start=calibration):
        prepared = prepare(batch["image"])
        for name, labels in labelers.items():
            scored[name].update(labels(prepared, [thresholds[name]])[0], batch["semantic"])
    return {name: {"miou": scored[name].miou(), "threshold": thresholds[name]} for name in labelers}


def _confusion(num_classes: int) -> ConfusionMatrix:
    """Background plus ``num_classes`` classes; VOC's boundary pixels (255) are ignored."""
    return ConfusionMatrix(num_classes=num_classes + 1, ignore_index=255)


def _coarse_labels(
    embeddings: Tensor, texts: Tensor, size: int, thresholds: Sequence[float]
) -> tuple[list[Tensor], Tensor]:
    """MaskCLIP labels ``[B, R, R]`` at each background threshold, and the class probabilities
    ``[B, K, R, R]`` they come from (see :func:`dense_semseg_from_embeddings`)."""
    labels, cosine = dense_semseg_from_embeddings(embeddings, texts, size=size)
    probs = (LOGIT_SCALE * cosine).softmax(dim=1)
    confidence = probs.amax(dim=1)
    return [torch.where(confidence < t, 0, labels) for t in thresholds], probs


def dense_labeler(texts: Tensor) -> Labeler:
    """Labels from prepared ``(patch embeddings [B, h, w, D], R)`` alone."""

    def labels(prepared: tuple[Tensor, int], thresholds: Sequence[float]) -> list[Tensor]:
        embeddings, size = prepared
        return _coarse_labels(embeddings, texts, size, thresholds)[0]

    return labels


def dense_segmenter(model: Any, texts: Tensor) -> Segmenter:
    """Zero-shot labels from patch embeddings alone (MaskCLIP; SAM-CLIP's CLIP-head semseg)."""
    return Segmenter(
        prepare=lambda x: (model.embed_patches(x), x.shape[-1]), labels=dense_labeler(texts)
    )


def dense_labels(model: Any, images: Tensor, texts: Tensor, threshold: float) -> Tensor:
    """:func:`dense_segmenter`'s labels for ``images``."""
    return dense_segmenter(model, texts)(images, threshold)


def refined_segmenter(
    model: Any, texts: Tensor, *, points_per_class: int, mask_class: MaskClass = "pooled"
) -> Segmenter:
    """SAM-CLIP's zero-shot segmentation with both heads (arXiv 2310.15308, sec. 5.2): the CLIP
    head's per-class masks give 1-3 points per class and the SAM head turns them into masks.

    A point's coarse class is only where its prompt came from (an object whose coarse mask is a
    patchwork of classes would otherwise be painted as one), so each SAM mask is classified
    again, by ``mask_class``:

    - ``"pooled"``: the CLIP head's image embedding of the mask, its own token pooling over the
      tokens the mask covers (``model.embed_regions``), against the class texts: the head's
      image-level ability, which is far better than its per-patch one, applied to the region
      the SAM head found;
    - ``"vote"``: the class that the CLIP head's per-patch probabilities, averaged over the
      mask's pixels, favour.

    Each pixel takes the class of its highest-logit mask (background where none is positive).
    The encoder and the CLIP head run in ``prepare`` (whose output, ``(features, patch
    embeddings, R, head tokens or None)``, :func:`dense_labeler` also reads at ``[1:3]``); the
    threshold decides the coarse masks, hence the prompts, so the SAM head runs in ``labels``:
    once per image for all thresholds asked.
    """
    pooled = mask_class == "pooled"
    needed = ("head_tokens", "embed_tokens", "embed_regions")
    if pooled and not all(callable(getattr(model, name, None)) for name in needed):
        raise ValueError(
            f"mask_class='pooled' needs a model with {', '.join(needed)}; "
            f"{type(model).__name__} lacks them (use mask_class='vote')"
        )

    @torch.no_grad()
    def prepare(images: Tensor) -> tuple[Any, Tensor, int, Tensor | None]:
        features = model.encode(images)
        if not pooled:
            return features, model.embed_patches_from(features), images.shape[-1], None
        tokens = model.head_tokens(features)  # once, for the patches and the masks' classes
        return features, model.embed_tokens(tokens), images.shape[-1], tokens

    @torch.no_grad()
    def labels(prepared: tuple[Any, Tensor, int, Any], thresholds: Sequence[float]) -> list[Tensor]:
        features, embeddings, size, tokens = prepared
        coarse, probs = _coarse_labels(embeddings, texts, size, thresholds)
        out = [torch.zeros_like(c) for c in coarse]
        for index in range(embeddings.shape[0]):
            refined = _refine_one(
                model,
                features,
                index,
                [c[index] for c in coarse],
                None if tokens is None else (tokens[index], texts),
                probs[index],
                points_per_class,
            )
            for labels_t, one in zip(out, refined, strict=True):
                labels_t[index] = one
        return out

    return Segmenter(prepare=prepare, labels=labels)


def refined_labels(
    model: Any,
    images: Tensor,
    texts: Tensor,
    threshold: float,
    *,
    points_per_class: int,
    mask_class: MaskClass = "pooled",
) -> Tensor:
    """:func:`refined_segmenter`'s labels for ``images``."""
    segmenter = refined_segmenter(
        model, texts, points_per_class=points_per_class, mask_class=mask_class
    )
    return segmenter(images, threshold)


def _refine_one(
    model,
    features,
    index: int,
    coarse: list[Tensor],
    pooling: tuple[Tensor, Tensor] | None,
    probs: Tensor,
    points_per_class: int,
) -> list[Tensor]:
    """One image's refined labels for each of its coarse label maps (one per threshold): the
    prompts of all of them are decoded in one SAM-head call. With ``pooling`` (the image's head
    tokens and the class texts), masks are classified by their pooled CLIP-head embedding;
    without, by the vote of ``probs``."""
    size = coarse[0].shape[-1]
    point_sets = [_class_points(c, points_per_class, seed=index) for c in coarse]
    counts = [0 if p is None else len(p) for p in point_sets]
    if sum(counts) == 0:
        return coarse
    points = torch.cat([p for p in point_sets if p is not None])
    prompts = Prompts(size, points[None, :, None], torch.ones(1, len(points), 1, dtype=torch.long))
    one = _select(features, index)
    all_logits = _upsampled_masks(model.mask_logits(one, prompts)[0], size)
    all_masks = all_logits > 0  # [N, R, R]
    if pooling is not None:
        tokens, texts = pooling
        all_classes = (model.embed_regions(tokens, all_masks) @ texts.T).argmax(dim=1) + 1
    else:
        area = all_masks.flatten(1).sum(1).clamp(min=1)
        votes = torch.einsum("nhw,khw->nk", all_masks.float(), probs) / area[:, None]
        all_classes = votes.argmax(dim=1) + 1  # [N], 1-based classes
    out = []
    for one_coarse, logits, classes in zip(
        coarse, all_logits.split(counts), all_classes.split(counts), strict=True
    ):
        if len(logits) == 0:
            out.append(one_coarse)
            continue
        score, winner = logits.max(dim=0)
        out.append(torch.where(score > 0, classes[winner], torch.zeros_like(winner)))
    return out


def _class_points(coarse: Tensor, points_per_class: int, *, seed: int) -> Tensor | None:
    """``[N, 2]`` xy pixel-centre points, up to ``points_per_class`` drawn in each foreground
    class's coarse mask (reproducibly from ``seed``), or None when there is no foreground."""
    generator = torch.Generator().manual_seed(seed)
    points = []
    for label in coarse.unique().tolist():
        if label == 0:
            continue
        ys, xs = torch.nonzero(coarse == label, as_tuple=True)
        picks = torch.randperm(len(ys), generator=generator)[:points_per_class]
        points.extend(torch.stack([xs[p] + 0.5, ys[p] + 0.5]) for p in picks.tolist())
    return torch.stack(points).float() if points else None


def _select(features: Any, index: int) -> Any:
    """One image's share of batched encoder outputs (a tensor, a list of tensors such as SAM 2's
    feature levels, a dict of them such as a student's blocks and levels, or a dataclass of
    those)."""
    if isinstance(features, Tensor):
        return features[index : index + 1]
    if isinstance(features, list):
        return [_select(level, index) for level in features]
    if isinstance(features, dict):
        return {key: _select(value, index) for key, value in features.items()}
    fields = {
        k: (_select(v, index) if isinstance(v, Tensor | list | dict) else v)
        for k, v in vars(features).items()
    }
    return type(features)(**fields)


def iter_pictures(dataset: Dataset, count: int) -> Iterator[dict[str, Any]]:
    yield from batches(dataset, batch_size=max(count, 1), stop=count)
