"""Metrics checked against hand-computed values (written out below) and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from mergekit_vision.eval.metrics import (
    ConfusionMatrix,
    coco_mask_ap,
    dense_semseg_from_embeddings,
    mask_iou,
    mean_mask_iou,
    top1_accuracy,
    upsample_logits,
)

# --- top-1 -------------------------------------------------------------------------------------


def test_top1_accuracy_by_hand() -> None:
    logits = torch.tensor(
        [
            [2.0, 1.0, 0.1],  # argmax 0, label 0: right
            [0.5, 0.2, 3.0],  # argmax 2, label 1: wrong
            [1.0, 4.0, 0.0],  # argmax 1, label 1: right
        ]
    )
    labels = torch.tensor([0, 1, 1])
    assert top1_accuracy(logits, labels) == pytest.approx(2 / 3)


def test_top1_accuracy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        top1_accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


# --- confusion matrix / mIoU --------------------------------------------------------------------

# target          pred
# [[0, 0, 1],     [[0, 1, 1],
#  [1, 2, 2]]      [1, 2, 0]]
# rows = target:  class 0 -> predicted {0, 1}, class 1 -> {1, 1}, class 2 -> {2, 0}
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 1]]
# IoU_c = TP / (row_sum + col_sum - TP):
#   class 0: 1 / (2 + 2 - 1) = 1/3;  class 1: 2 / (2 + 3 - 2) = 2/3;  class 2: 1 / (2 + 1 - 1) = 1/2
# mIoU = (1/3 + 2/3 + 1/2) / 3 = 0.5;  pixel accuracy = 4 / 6.
TARGET = torch.tensor([[0, 0, 1], [1, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand() -> None:
    cm = ConfusionMatrix(num_classes=3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.iou().tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_confusion_matrix_streams_over_batches() -> None:
    cm = ConfusionMatrix(num_classes=3)
    cm.update(PRED[0], TARGET[0])
    cm.update(PRED[1], TARGET[1])
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    cm.reset()
    assert cm.matrix.sum().item() == 0
    assert math.isnan(cm.miou())


def test_ignore_index_skips_pixels() -> None:
    # Ignoring the bottom-right pixel (target 2, pred 0) removes one class-0 false positive and
    # one class-2 false negative:
    #   IoU_0 = 1 / (2 + 1 - 1) = 1/2,  IoU_1 = 2/3,  IoU_2 = 1 / (1 + 1 - 1) = 1.
    target = TARGET.clone()
    target[1, 2] = 255
    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    cm.update(PRED, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert cm.iou().tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)


def test_out_of_range_values_are_errors() -> None:
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="pred values"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target values"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(num_classes=3, ignore_index=0)


def test_miou_matches_torchmetrics_when_every_class_occurs() -> None:
    generator = torch.Generator().manual_seed(0)
    num_classes = 5
    target = torch.randint(0, num_classes, (2, 16, 16), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = 255
    # Predictions agree with the target 60% of the time so IoUs are spread, not all near 1/C.
    noise = torch.randint(0, num_classes, target.shape, generator=generator)
    pred = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target, noise)
    pred[pred == 255] = 0
    assert set(target[target != 255].unique().tolist()) == set(range(num_classes))

    ours = ConfusionMatrix(num_classes=num_classes, ignore_index=255)
    ours.update(pred, target)
    reference = MulticlassJaccardIndex(
        num_classes=num_classes, average="macro", ignore_index=255, zero_division=0.0
    )
    assert ours.miou() == pytest.approx(reference(pred, target).item(), abs=1e-6)


def test_absent_class_is_excluded_from_miou() -> None:
    # Class 3 occurs in neither target nor prediction. Our convention (VOC / mmseg): its IoU is NaN
    # and mIoU is the mean over the 3 classes that occur, 0.5 as computed by hand above.
    # torchmetrics' per-class scores put `zero_division` in that slot instead of NaN, and its macro
    # average has changed convention across releases (issue Lightning-AI/torchmetrics#1693: older
    # releases averaged the absent class in as 0), so we compare per-class scores only.
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED, TARGET)
    per_class = cm.iou()
    assert math.isnan(per_class[3].item())
    assert cm.miou() == pytest.approx(0.5)
    assert cm.miou() != pytest.approx(per_class.nan_to_num(0.0).mean().item())  # 0.375

    reference = MulticlassJaccardIndex(num_classes=4, average="none", zero_division=0.0)
    reference_scores = reference(PRED.flatten(), TARGET.flatten())
    assert per_class[:3].tolist() == pytest.approx(reference_scores[:3].tolist())
    assert reference_scores[3].item() == 0.0


# --- promptable-mask IoU ------------------------------------------------------------------------


def test_mask_iou_by_hand() -> None:
    pred = torch.zeros(4, 3, 3, dtype=torch.bool)
    target = torch.zeros(4, 3, 3, dtype=torch.bool)
    # Mask 0: predicted top row, true left column; they share pixel (0, 0): 1 / 5.
    pred[0, 0, :] = True
    target[0, :, 0] = True
    # Mask 1: identical non-empty masks: 1.
    pred[1, 1:, 1:] = True
    target[1, 1:, 1:] = True
    # Mask 2: both empty: 1 by convention.
    # Mask 3: nothing predicted for a real object: 0.
    target[3, 2, 2] = True
    assert mask_iou(pred, target).tolist() == pytest.approx([0.2, 1.0, 1.0, 0.0])
    assert mean_mask_iou(pred, target) == pytest.approx((0.2 + 1.0 + 1.0 + 0.0) / 4)


def test_mask_iou_requires_bool_masks() -> None:
    with pytest.raises(TypeError, match="bool"):
        mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))


# --- COCO mask AP -------------------------------------------------------------------------------

SIZES = {1: (32, 32), 2: (32, 24)}


def _box_mask(size: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[rows, cols] = True
    return mask


def _gt_square() -> dict:
    # A 10 x 10 = 100-pixel object in image 1.
    return {
        "image_id": 1,
        "category_id": 1,
        "mask": _box_mask(SIZES[1], slice(4, 14), slice(4, 14)),
    }


def test_coco_mask_ap_perfect_predictions() -> None:
    gt = [
        _gt_square(),
        {"image_id": 1, "category_id": 2, "mask": _box_mask(SIZES[1], slice(18, 30), slice(2, 9))},
        {"image_id": 2, "category_id": 1, "mask": _box_mask(SIZES[2], slice(0, 20), slice(5, 24))},
    ]
    # Tensor masks are accepted as well as numpy arrays.
    predictions = [
        {**ann, "mask": torch.from_numpy(ann["mask"]), "score": 0.9 - 0.1 * i}
        for i, ann in enumerate(gt)
    ]
    # A low-scoring false positive ranks after every true positive, so precision at full recall
    # is still 1.
    predictions.append(
        {"image_id": 2, "category_id": 1, "mask": _box_mask(SIZES[2], slice(25, 30), slice(0, 3)),
         "score": 0.01}
    )  # fmt: skip
    result = coco_mask_ap(gt, predictions, image_sizes=SIZES)
    assert result == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_coco_mask_ap_shifted_mask_scores_lower() -> None:
    # Shifted 2 columns right: intersection 10 * 8 = 80, union 120, IoU 2/3. It matches at the
    # thresholds 0.50, 0.55, 0.60, 0.65 out of the ten 0.50:0.05:0.95, so AP = 4/10.
    shifted = {**_gt_square(), "mask": _box_mask(SIZES[1], slice(4, 14), slice(6, 16)), "score": 1}
    result = coco_mask_ap([_gt_square()], [shifted], image_sizes=SIZES)
    assert result == pytest.approx({"AP": 0.4, "AP50": 1.0, "AP75": 0.0})


def test_coco_mask_ap50_versus_ap75_at_iou_0_6() -> None:
    # The prediction covers the 10 x 10 object plus 6 extra columns: IoU = 100 / 160 = 0.625.
    # A true positive at IoU 0.5 (AP50 = 1), a miss at 0.75 (AP75 = 0); matched at 0.50, 0.55,
    # 0.60 so AP = 3/10. (IoU of exactly 0.6 would sit on a COCO threshold, hence 0.625.)
    wider = {**_gt_square(), "mask": _box_mask(SIZES[1], slice(4, 14), slice(4, 20)), "score": 1}
    result = coco_mask_ap([_gt_square()], [wider], image_sizes=SIZES)
    assert result == pytest.approx({"AP": 0.3, "AP50": 1.0, "AP75": 0.0})


def test_coco_mask_ap_without_predictions_is_zero() -> None:
    result = coco_mask_ap([_gt_square()], [], image_sizes=SIZES)
    assert result == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_coco_mask_ap_wrong_category_is_zero() -> None:
    wrong = {**_gt_square(), "category_id": 2, "score": 1.0}
    assert coco_mask_ap([_gt_square()], [wrong], image_sizes=SIZES)["AP"] == 0.0


def test_coco_mask_ap_input_errors() -> None:
    unknown_image = {**_gt_square(), "image_id": 9, "score": 1.0}
    with pytest.raises(ValueError, match="image_id 9"):
        coco_mask_ap([_gt_square()], [unknown_image], image_sizes=SIZES)
    wrong_size = {**_gt_square(), "mask": np.zeros((8, 8), dtype=bool), "score": 1.0}
    with pytest.raises(ValueError, match="mask shape"):
        coco_mask_ap([_gt_square()], [wrong_size], image_sizes=SIZES)
    with pytest.raises(ValueError, match="no ground truth"):
        coco_mask_ap([], [], image_sizes=SIZES)


# --- dense zero-shot segmentation ---------------------------------------------------------------


def test_upsample_logits_shape_and_constant_map() -> None:
    logits = torch.full((2, 3, 4, 4), 0.7)
    upsampled = upsample_logits(logits, 16)
    assert upsampled.shape == (2, 3, 16, 16)
    assert torch.allclose(upsampled, torch.full_like(upsampled, 0.7))
    assert upsample_logits(logits, (8, 12)).shape == (2, 3, 8, 12)


def _text_and_patches(grid: torch.Tensor, *, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings are scaled one-hot vectors; patch (i, j) equals class grid[i, j]'s."""
    text = 3.0 * torch.eye(dim)[: int(grid.max()) + 1]  # the scale checks L2 normalization
    patches = text[grid].unsqueeze(0)  # [1, h, w, D]
    return text, patches


def test_dense_semseg_labels_patch_with_its_text_class() -> None:
    grid = torch.tensor([[0, 1], [2, 3]])
    text, patches = _text_and_patches(grid)
    labels, logits = dense_semseg_from_embeddings(patches, text, size=2)
    assert labels.tolist() == [(grid + 1).tolist()]
    # Cosine of a patch with its own class is 1, with the others 0.
    assert logits.shape == (1, 4, 2, 2)
    assert torch.allclose(logits[0, :, 0, 1], torch.tensor([0.0, 1.0, 0.0, 0.0]))

    # Bilinear upsampling 2 -> 8 keeps every 4 x 4 block on its patch's class: inside a block the
    # 1-D weight on the own patch is >= 0.625 along each axis, so it outweighs every neighbour.
    labels, logits = dense_semseg_from_embeddings(patches, text, size=8)
    expected = (grid + 1).repeat_interleave(4, dim=0).repeat_interleave(4, dim=1)
    assert logits.shape == (1, 4, 8, 8)
    assert torch.equal(labels[0], expected)


def test_dense_semseg_background_threshold() -> None:
    text = torch.eye(3)
    patches = torch.stack(
        [
            text[0],  # confident class 0: p = e^100 / (e^100 + 2) ~ 1
            text[0] + text[1],  # halfway between classes 0 and 1: cos 0.707 for both, p ~ 0.5
        ]
    ).reshape(1, 1, 2, 3)
    labels, _ = dense_semseg_from_embeddings(patches, text, size=(1, 2), background_threshold=0.6)
    assert labels.tolist() == [[[1, 0]]]

    labels, _ = dense_semseg_from_embeddings(patches, text, size=(1, 2), background_threshold=None)
    assert labels[0, 0, 0].item() == 1
    assert labels[0, 0, 1].item() in (1, 2)  # a tie, but never background

    # A low temperature flattens the softmax: even the exact match falls below 0.6
    # (e^1 / (e^1 + 2) = 0.58), so both pixels become background.
    labels, _ = dense_semseg_from_embeddings(
        patches, text, size=(1, 2), background_threshold=0.6, temperature=1.0
    )
    assert labels.tolist() == [[[0, 0]]]


def test_dense_semseg_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="widths"):
        dense_semseg_from_embeddings(torch.zeros(1, 2, 2, 4), torch.zeros(3, 5), size=4)
