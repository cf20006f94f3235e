"""Frozen-feature probes on cases whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mergekit_vision.eval.probes import knn_top1, linear_probe_top1, linear_seg_probe_miou

# --- k-NN ----------------------------------------------------------------------------------------


def _unit(cosine: float, sign: float = 1.0) -> list[float]:
    """A 2-D unit vector at the given cosine with the query [1, 0]."""
    return [cosine, sign * math.sqrt(1.0 - cosine**2)]


# One train sample of class 0 at cosine 0.99 with the query, two of class 1 at cosine 0.9, one of
# class 2 opposite (cosine -1, outside the 3 nearest). The majority of the 3 nearest is class 1.
# Votes at temperature 0.07: class 0 exp(0.99/0.07) = exp(14.143) ~ 1.39e6;
#                            class 1 2 exp(0.9/0.07) = 2 exp(12.857) ~ 7.68e5   -> class 0 wins.
# Votes at temperature 1:    class 0 exp(0.99) = 2.69; class 1 2 exp(0.9) = 4.92 -> class 1 wins.
KNN_TRAIN = torch.tensor([_unit(0.99), _unit(0.9), _unit(0.9, -1.0), [-1.0, 0.0]])
KNN_TRAIN_LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[1.0, 0.0]])


def test_knn_weighted_vote_beats_the_majority_at_a_low_temperature() -> None:
    label_0 = torch.tensor([0])
    assert knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, QUERY, label_0, k=3) == 1.0
    assert knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, QUERY, label_0, k=3, temperature=1.0) == 0.0
    label_1 = torch.tensor([1])
    assert knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, QUERY, label_1, k=3, temperature=1.0) == 1.0


def test_knn_is_cosine_and_clips_k() -> None:
    # Scaling features changes no cosine; k=20 > N=4 lets the opposite sample vote with weight
    # exp(-1/0.07) ~ 6e-7, which changes nothing.
    scaled = KNN_TRAIN * torch.tensor([[10.0], [0.1], [3.0], [7.0]])
    assert knn_top1(scaled, KNN_TRAIN_LABELS, 5 * QUERY, torch.tensor([0])) == 1.0
    # With k=1 only the class-0 sample votes: right for label 0, wrong for label 1.
    both = torch.cat([QUERY, QUERY])
    assert knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, both, torch.tensor([0, 1]), k=1) == 0.5


def test_knn_ties_are_broken_by_lower_index() -> None:
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Two train samples exactly as similar; k=1 takes train index 0.
    assert knn_top1(same, torch.tensor([1, 0]), QUERY, torch.tensor([1]), k=1) == 1.0
    assert knn_top1(same, torch.tensor([0, 1]), QUERY, torch.tensor([0]), k=1) == 1.0
    # k=2: both vote with equal weight, classes 0 and 1 tie, the lower class wins.
    assert knn_top1(same, torch.tensor([1, 0]), QUERY, torch.tensor([0]), k=2) == 1.0


def _dino_knn_reference(train, train_labels, test, test_labels, *, k, temperature, classes):
    """DINO's eval_knn.knn_classifier, written out (no ties occur on continuous random data)."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    similarity = test @ train.T
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    retrieved = train_labels[indices]
    one_hot = torch.zeros(test.shape[0] * k, classes).scatter_(1, retrieved.view(-1, 1), 1)
    weights = distances.div(temperature).exp()
    probs = (one_hot.view(test.shape[0], k, classes) * weights[:, :, None]).sum(1)
    return (probs.argmax(1) == test_labels).float().mean().item()


def test_knn_matches_dinos_evaluation_on_random_features() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=generator)
    test = torch.randn(600, 16, generator=generator)  # > one chunk of test rows
    train_labels = torch.randint(0, 5, (300,), generator=generator)
    test_labels = torch.randint(0, 5, (600,), generator=generator)
    for k, temperature in [(20, 0.07), (5, 0.5)]:
        got = knn_top1(train, train_labels, test, test_labels, k=k, temperature=temperature)
        want = _dino_knn_reference(
            train, train_labels, test, test_labels, k=k, temperature=temperature, classes=5
        )
        assert got == pytest.approx(want, abs=1e-6)  # the reference means in float32


def test_knn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="feature widths differ"):
        knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, torch.ones(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, QUERY, torch.tensor([0]), num_classes=2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_top1(KNN_TRAIN, KNN_TRAIN_LABELS, QUERY, torch.tensor([0]), k=0)


# --- linear probe --------------------------------------------------------------------------------


def _clusters(n_per_class: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian clusters in 8-D (centres 10 apart, std 1)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.eye(3, 8)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), 8, generator=generator), labels


def test_linear_probe_separates_separable_features() -> None:
    train, train_labels = _clusters(20, seed=0)
    test, test_labels = _clusters(10, seed=1)
    assert linear_probe_top1(train, train_labels, test, test_labels) == 1.0


def test_linear_probe_cannot_learn_random_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 8, generator=generator), torch.randn(300, 8, generator=generator)
    train_labels = torch.randint(0, 3, (60,), generator=generator)
    test_labels = torch.randint(0, 3, (300,), generator=generator)
    # Chance is 1/3; 300 test samples put 0.5 beyond four standard deviations of it.
    assert linear_probe_top1(train, train_labels, test, test_labels) < 0.5


def test_linear_probe_on_constant_features_predicts_the_majority_class() -> None:
    # Standardized constant features are all 0, so only the bias learns: it favours class 1
    # (3 of 4 train samples). The test split holds class 1 in 6 of 10 samples -> 0.6.
    train_labels = torch.tensor([0, 1, 1, 1] * 5)
    test_labels = torch.tensor([1] * 6 + [0] * 2 + [2] * 2)
    top1 = linear_probe_top1(torch.ones(20, 4), train_labels, torch.ones(10, 4), test_labels)
    assert top1 == pytest.approx(0.6)


def test_linear_probe_is_seeded_and_works_under_inference_mode() -> None:
    generator = torch.Generator().manual_seed(3)
    train, test = torch.randn(40, 6, generator=generator), torch.randn(40, 6, generator=generator)
    train_labels = (train[:, 0] + 0.5 * torch.randn(40, generator=generator) > 0).long()
    test_labels = (test[:, 0] > 0).long()
    first = linear_probe_top1(train, train_labels, test, test_labels, epochs=5, seed=7)
    with torch.inference_mode():
        frozen = [t.clone() for t in (train, train_labels, test, test_labels)]
        again = linear_probe_top1(*frozen, epochs=5, seed=7)
    assert first == again


# --- linear segmentation probe -------------------------------------------------------------------


def _seg_split(patch_classes: torch.Tensor, *, scale: int, classes: int = 3):
    """One-hot class features per patch and labels nearest-upsampled ``scale`` times."""
    features = F.one_hot(patch_classes, classes).permute(0, 3, 1, 2).float()
    labels = patch_classes.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return features, labels


def _random_classes(n: int, *, seed: int, size: int = 8, classes: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n, size, size), generator=generator)


def test_seg_probe_reads_features_that_encode_the_class_per_pixel() -> None:
    train, train_labels = _seg_split(_random_classes(8, seed=0), scale=1)
    test, test_labels = _seg_split(_random_classes(4, seed=1), scale=1)
    miou = linear_seg_probe_miou(train, train_labels, test, test_labels, num_classes=3)
    assert miou == 1.0
    # A fourth class absent from the test split is not averaged in.
    assert linear_seg_probe_miou(train, train_labels, test, test_labels, num_classes=4) == 1.0


def test_seg_probe_upsamples_coarse_logits_to_the_labels() -> None:
    # Vertical stripes at 4x4 patches, labels at 16x16: along a stripe boundary the bilinear
    # weight of a pixel's own patch is 5/8 or 7/8 > 1/2, so the right class still wins there.
    # (Random blocks would not do: at a corner shared with two patches of another class, the
    # other class can hold more than half the bilinear weight.)
    def stripes(n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, 3, (n, 1, 4), generator=generator).expand(n, 4, 4)

    train, train_labels = _seg_split(stripes(8, 0), scale=4)
    test, test_labels = _seg_split(stripes(4, 1), scale=4)
    assert train.shape[-1] == 4 and train_labels.shape[-1] == 16
    miou = linear_seg_probe_miou(train, train_labels, test, test_labels, num_classes=3)
    assert miou == 1.0


def test_seg_probe_skips_ignored_pixels() -> None:
    train, train_labels = _seg_split(_random_classes(8, seed=0), scale=1)
    test, test_labels = _seg_split(_random_classes(4, seed=1), scale=1)
    # An ignored train label (255 is no class) must not reach the cross-entropy; an ignored test
    # pixel the probe gets wrong must not count.
    train_labels[:, 0, 0] = 255
    test[:, :, -1, -1] = torch.tensor([0.0, 0.0, 1.0])
    test_labels[:, -1, -1] = 0
    assert linear_seg_probe_miou(train, train_labels, test, test_labels, num_classes=3) < 1.0
    test_labels[:, -1, -1] = 255
    assert linear_seg_probe_miou(train, train_labels, test, test_labels, num_classes=3) == 1.0
    all_ignored = torch.full_like(test_labels, 255)
    assert math.isnan(linear_seg_probe_miou(train, train_labels, test, all_ignored, num_classes=3))


def test_seg_probe_on_constant_features_predicts_the_majority_class() -> None:
    # Class 1 covers 3/4 of every image, class 0 the left quarter of columns. Constant features
    # leave only the bias, which favours class 1 everywhere: IoU(1) = 0.75, IoU(0) = 0 / 0.25 = 0,
    # class 2 never occurs -> mIoU = (0.75 + 0) / 2 = 0.375.
    labels = torch.ones(6, 8, 8, dtype=torch.long)
    labels[:, :, :2] = 0
    features = torch.ones(6, 5, 2, 2)
    miou = linear_seg_probe_miou(features, labels, features[:2], labels[:2], num_classes=3)
    assert miou == pytest.approx(0.375)


def test_seg_probe_rejects_labels_out_of_range() -> None:
    features, labels = _seg_split(_random_classes(2, seed=0), scale=1)
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, 2\)"):
        linear_seg_probe_miou(features, labels, features, labels, num_classes=2)
