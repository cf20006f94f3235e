"""Evaluation metrics: classification accuracy, semantic-segmentation mIoU, promptable-mask IoU,
COCO mask AP, and dense zero-shot segmentation from patch and text embeddings.

Everything here is a pure function of tensors (or a small accumulator), so the same numbers come
out of the engine's periodic evaluation, the ``vmerge eval`` command and a user's notebook.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose highest-scoring class is the label.

    Ties go to the lowest class index (``torch.argmax``).

    Args:
        logits: ``[N, C]`` class scores (logits, probabilities or similarities).
        labels: ``[N]`` integer class indices in ``[0, C)``.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"top1_accuracy expects logits [N, C] and labels [N], got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("top1_accuracy: no samples")
    return (logits.argmax(dim=1) == labels).float().mean().item()


class ConfusionMatrix:
    """Streaming ``[C, C]`` confusion matrix for semantic segmentation (rows = target class).

    Per-class IoU is ``TP / (TP + FP + FN)``, the PASCAL VOC segmentation measure (Everingham et
    al., IJCV 2010). mIoU follows the VOC / mmsegmentation convention: it is the mean over classes
    whose IoU is defined, so a class that never occurs in the target nor in the prediction over the
    whole evaluation set is left out (it has no pixels to be right or wrong about) rather than
    scored 0 or 1. Accumulate over the whole dataset and read mIoU once; averaging per-image mIoUs
    gives a different, noisier number.
    """

    def __init__(self, *, num_classes: int, ignore_index: int | None = 255) -> None:
        """
        Args:
            num_classes: number of classes ``C``; valid labels are ``0 .. C-1``.
            ignore_index: target value marking pixels to skip (VOC's object boundaries use 255);
                ``None`` to count every pixel.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} collides with a class in [0, {num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of predictions.

        Args:
            pred: integer class indices of any shape, e.g. ``[B, H, W]``; every value must lie in
                ``[0, C)``.
            target: integer class indices, the same shape as ``pred``; pixels equal to
                ``ignore_index`` are skipped, every other value must lie in ``[0, C)``.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class indices (take argmax first)")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(
                f"pred values must lie in [0, {self.num_classes}), got range "
                f"[{pred.min().item()}, {pred.max().item()}]"
            )
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(
                f"target values must lie in [0, {self.num_classes}) or equal ignore_index "
                f"{self.ignore_index}, got range [{target.min().item()}, {target.max().item()}]"
            )
        # One bincount over the flattened (target, pred) pair index is the whole update.
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self._matrix += counts.reshape(self.num_classes, self.num_classes).cpu()

    @property
    def matrix(self) -> Tensor:
        """``[C, C]`` int64 counts; ``matrix[t, p]`` = pixels of target class t predicted as p."""
        return self._matrix.clone()

    def iou(self) -> Tensor:
        """Per-class IoU.

        Returns:
            ``[C]`` float64; NaN for a class absent from both target and prediction.
        """
        matrix = self._matrix.double()
        true_positive = matrix.diagonal()
        union = matrix.sum(dim=0) + matrix.sum(dim=1) - true_positive
        return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)

    def miou(self) -> float:
        """Mean IoU over the classes with a defined IoU (NaN if no pixel was counted)."""
        per_class = self.iou()
        if torch.isnan(per_class).all():
            return math.nan
        return per_class.nanmean().item()

    def pixel_accuracy(self) -> float:
        """Fraction of counted (non-ignored) pixels predicted correctly (NaN if none)."""
        total = self._matrix.sum().item()
        if total == 0:
            return math.nan
        return self._matrix.diagonal().sum().item() / total


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of each predicted mask with its ground-truth mask.

    Two empty masks agree perfectly, so their IoU is 1.

    Args:
        pred: ``[N, H, W]`` bool predicted masks.
        target: ``[N, H, W]`` bool ground-truth masks.

    Returns:
        ``[N]`` float32 IoUs in ``[0, 1]``.
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"mask_iou expects matching [N, H, W] masks, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred.dtype != torch.bool or target.dtype != torch.bool:
        # Silently thresholding logits at 0.5 (or 0) would hide a bug; the caller decides.
        raise TypeError("mask_iou expects bool masks; threshold logits first (e.g. logits > 0)")
    pred, target = pred.flatten(1), target.flatten(1)
    intersection = (pred & target).sum(dim=1).float()
    union = (pred | target).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def mean_mask_iou(pred: Tensor, target: Tensor) -> float:
    """Promptable-segmentation mIoU: mean over prompts of the IoU of the predicted mask with the
    ground-truth mask of the prompted object (SAM's single-point evaluation, Kirillov et al.,
    ICCV 2023).

    Args:
        pred: ``[N, H, W]`` bool, one predicted mask per prompt.
        target: ``[N, H, W]`` bool, the prompted object's ground-truth mask.

    Returns:
        Mean IoU in ``[0, 1]``.
    """
    if pred.shape[0] == 0:
        raise ValueError("mean_mask_iou: no masks")
    return mask_iou(pred, target).mean().item()


def _encode_mask(mask: Any, *, expected_size: tuple[int, int], where: str) -> dict[str, Any]:
    """COCO run-length encoding of one ``[H, W]`` binary mask (numpy or tensor)."""
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.shape != tuple(expected_size):
        raise ValueError(f"{where}: mask shape {array.shape} != image size {expected_size}")
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ground_truth_dataset(
    gt: Sequence[dict[str, Any]], image_sizes: dict[int, tuple[int, int]]
) -> dict[str, Any]:
    annotations = []
    # Annotation ids start at 1: COCOeval records a match as the matched gt id, so id 0 would
    # read as "unmatched" and silently turn a true positive into a false positive.
    for ann_id, ann in enumerate(gt, start=1):
        image_id = int(ann["image_id"])
        if image_id not in image_sizes:
            raise ValueError(f"ground truth {ann_id - 1}: image_id {image_id} not in image_sizes")
        where = f"ground truth {ann_id - 1}"
        rle = _encode_mask(ann["mask"], expected_size=image_sizes[image_id], where=where)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(ann["category_id"]),
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    images = [{"id": int(i), "height": h, "width": w} for i, (h, w) in image_sizes.items()]
    categories = [{"id": c} for c in sorted({a["category_id"] for a in annotations})]
    return {"images": images, "annotations": annotations, "categories": categories}


def _detections(
    predictions: Sequence[dict[str, Any]], image_sizes: dict[int, tuple[int, int]]
) -> list[dict[str, Any]]:
    detections = []
    for index, pred in enumerate(predictions):
        image_id = int(pred["image_id"])
        if image_id not in image_sizes:
            raise ValueError(f"prediction {index}: image_id {image_id} not in image_sizes")
        where = f"prediction {index}"
        rle = _encode_mask(pred["mask"], expected_size=image_sizes[image_id], where=where)
        detections.append(
            {
                "image_id": image_id,
                "category_id": int(pred["category_id"]),
                "segmentation": rle,
                "score": float(pred["score"]),
            }
        )
    return detections


def coco_mask_ap(
    gt: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
    *,
    image_sizes: dict[int, tuple[int, int]],
) -> dict[str, float]:
    """COCO instance-segmentation mask AP, computed by pycocotools' ``COCOeval`` (iouType "segm").

    AP is averaged over IoU thresholds 0.50:0.05:0.95 and over categories with ground truth, with
    101-point interpolated precision and at most 100 detections per image (Lin et al., ECCV 2014,
    and the COCO detection evaluation page). AP50 and AP75 use a single IoU threshold.
    This is the "COCO mask mAP" SAM-CLIP tracks as its forgetting metric (box-prompted SAM masks
    scored against COCO instances).

    Args:
        gt: ground-truth instances ``{"image_id": int, "category_id": int, "mask": [H, W] bool}``
            (numpy array or tensor).
        predictions: detections ``{"image_id", "category_id", "mask": [H, W] bool,
            "score": float}``.
        image_sizes: ``image_id -> (H, W)`` for every evaluated image, including images with no
            ground truth (their detections count as false positives).

    Returns:
        ``{"AP", "AP50", "AP75"}`` in ``[0, 1]``; all 0.0 when there are no predictions.
    """
    if not gt:
        raise ValueError("coco_mask_ap: no ground truth, AP is undefined")
    dataset = _ground_truth_dataset(gt, image_sizes)
    detections = _detections(predictions, image_sizes)
    if not detections:
        # pycocotools' loadRes cannot take an empty list; nothing detected means zero recall.
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # pycocotools reports progress with print(); keep evaluation output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[i] is -1 when no category has ground truth at that setting; that cannot happen here
    # (gt is non-empty and the "all" area range covers every mask), so clamp only defensively.
    ap, ap50, ap75 = (max(float(evaluator.stats[i]), 0.0) for i in range(3))
    return {"AP": ap, "AP50": ap50, "AP75": ap75}


def upsample_logits(logits: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinearly resize per-class score maps (``align_corners=False``).

    Args:
        logits: ``[B, C, h, w]``.
        size: output ``H`` (square) or ``(H, W)``.

    Returns:
        ``[B, C, H, W]``.
    """
    if logits.ndim != 4:
        raise ValueError(f"upsample_logits expects [B, C, h, w], got {tuple(logits.shape)}")
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def dense_semseg_from_embeddings(
    patch_embeddings: Tensor,
    text_embeddings: Tensor,
    *,
    size: int | tuple[int, int],
    background_threshold: float | None = None,
    temperature: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """Zero-shot semantic segmentation by matching patch embeddings to class text embeddings.

    MaskCLIP-style dense prediction (Zhou et al., "Extract Free Dense Labels from CLIP",
    ECCV 2022), as used for SAM-CLIP's CLIP-head semantic segmentation (Wang et al., arXiv
    2310.15308): cosine similarity of every patch with every class's text embedding, resized
    bilinearly to the output size, argmax over classes. A pixel is background when its largest
    class probability ``softmax(temperature * cosine)`` is below ``background_threshold``.

    Args:
        patch_embeddings: ``[B, h, w, D]`` per-patch embeddings in the text embedding space.
        text_embeddings: ``[K, D]`` one embedding per class (e.g. prompt-template averages).
        size: output ``H`` (square) or ``(H, W)``.
        background_threshold: minimum max-probability for a foreground label; ``None`` labels
            every pixel with a class.
        temperature: softmax scale for the background test (CLIP's logit scale is 100).

    Returns:
        ``labels`` ``[B, H, W]`` int64 with 0 = background and ``k + 1`` = class ``k``, and
        ``logits`` ``[B, K, H, W]``, the upsampled cosine similarities (not temperature-scaled).
    """
    if patch_embeddings.ndim != 4 or text_embeddings.ndim != 2:
        raise ValueError(
            f"expected patch embeddings [B, h, w, D] and text embeddings [K, D], got "
            f"{tuple(patch_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    if patch_embeddings.shape[-1] != text_embeddings.shape[-1]:
        raise ValueError(
            f"embedding widths differ: patches {patch_embeddings.shape[-1]}, "
            f"text {text_embeddings.shape[-1]}"
        )
    patches = F.normalize(patch_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float(), dim=-1)
    cosine = torch.einsum("bhwd,kd->bkhw", patches, texts)
    logits = upsample_logits(cosine, size)
    labels = logits.argmax(dim=1) + 1
    if background_threshold is not None:
        confidence = (temperature * logits).softmax(dim=1).amax(dim=1)
        labels = torch.where(confidence < background_threshold, 0, labels)
    return labels, logits
