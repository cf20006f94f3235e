"""Frozen-feature probes: k-NN and linear classification on summary features, and a linear
semantic-segmentation probe on dense features.

These are how agglomerative models are compared with their teachers (AM-RADIO, Ranzinger et al.,
CVPR 2024; UNIC, Sariyildiz et al., ECCV 2024; Theia, Shang et al., CoRL 2024): the backbone is
frozen, its features are computed once, and a cheap, fixed protocol reads them. Every function here
is a pure function of feature and label tensors, deterministic for a given seed, so a probe's
number depends on the features alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.eval.metrics import ConfusionMatrix, upsample_logits

# Test rows scored against the whole train set at once: bounds the [rows, N] similarity block.
_KNN_CHUNK = 256
# A channel whose train std is below this is constant; it is centred to 0, not blown up.
_MIN_STD = 1e-6


def _check_split(features: Tensor, labels: Tensor, *, name: str, feature_ndim: int) -> None:
    if features.ndim != feature_ndim or labels.ndim != 1 + (feature_ndim - 2):
        raise ValueError(
            f"{name}: features {tuple(features.shape)} and labels {tuple(labels.shape)} have the "
            "wrong number of dimensions"
        )
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
    if features.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    if labels.is_floating_point():
        raise TypeError(f"{name}: labels must be integer class indices")


def _resolve_num_classes(train_labels: Tensor, test_labels: Tensor, num_classes: int | None) -> int:
    largest = int(max(train_labels.max().item(), test_labels.max().item()))
    smallest = int(min(train_labels.min().item(), test_labels.min().item()))
    if smallest < 0:
        raise ValueError(f"labels must be non-negative, got {smallest}")
    if num_classes is None:
        return largest + 1
    if largest >= num_classes:
        raise ValueError(f"label {largest} is out of range for num_classes={num_classes}")
    return num_classes


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted k-nearest-neighbour top-1 accuracy on frozen summary features.

    The protocol of DINO's k-NN evaluation (Caron et al., "Emerging Properties in Self-Supervised
    Vision Transformers", ICCV 2021, ``eval_knn.py``), itself from Wu et al., "Unsupervised
    Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018: features are
    L2-normalized, each test sample's ``k`` most cosine-similar train samples vote for their
    labels with weight ``exp(similarity / temperature)``, and the class with the largest total
    vote is the prediction.

    Ties are broken deterministically: among train samples equally similar at the k-th place the
    lower train index is taken, and among classes with equal votes the lower class index wins.

    Args:
        train_features: ``[N, D]`` features of the labelled (train) split.
        train_labels: ``[N]`` integer class indices.
        test_features: ``[M, D]`` features of the evaluated split.
        test_labels: ``[M]`` integer class indices.
        k: neighbours that vote; clipped to ``N``.
        temperature: softmax-like temperature of the vote weights (DINO uses 0.07).
        num_classes: number of classes; inferred as ``max label + 1`` when ``None``.

    Returns:
        Top-1 accuracy in ``[0, 1]``.
    """
    _check_split(train_features, train_labels, name="train", feature_ndim=2)
    _check_split(test_features, test_labels, name="test", feature_ndim=2)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"feature widths differ: train {train_features.shape[1]}, test {test_features.shape[1]}"
        )
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, {temperature=}")
    classes = _resolve_num_classes(train_labels, test_labels, num_classes)
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.detach().float(), dim=1)
    test = F.normalize(test_features.detach().float(), dim=1)
    train_labels = train_labels.to(train.device).long()
    correct = 0
    for start in range(0, test.shape[0], _KNN_CHUNK):
        similarity = test[start : start + _KNN_CHUNK].to(train.device) @ train.T
        neighbours = _nearest_by_index(similarity, k)
        weights = (similarity.gather(1, neighbours).double() / temperature).exp()
        votes = torch.zeros(similarity.shape[0], classes, dtype=torch.float64, device=train.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        predicted = votes.argmax(dim=1).cpu()
        correct += int((predicted == test_labels[start : start + _KNN_CHUNK].cpu()).sum())
    return correct / test.shape[0]


def _nearest_by_index(similarity: Tensor, k: int) -> Tensor:
    """``[M, k]`` indices of each row's ``k`` largest entries, ties at the cut taken by index.

    ``torch.topk`` leaves the choice among equal values unspecified; here every value above the
    k-th largest is taken, then the lowest-indexed values equal to it fill the remaining places.
    """
    kth = similarity.topk(k, dim=1).values[:, -1:]
    above = similarity > kth
    at_cut = similarity == kth
    places_left = k - above.sum(dim=1, keepdim=True)
    chosen = above | (at_cut & (at_cut.cumsum(dim=1) <= places_left))
    # Exactly k entries per row are chosen; nonzero() lists them row by row.
    return chosen.nonzero()[:, 1].reshape(similarity.shape[0], k)


def _standardize(train: Tensor, test: Tensor, *, channel_dim: int) -> tuple[Tensor, Tensor]:
    """Centre and scale each channel with the train split's statistics (test is not peeked at)."""
    reduce = [d for d in range(train.ndim) if d != channel_dim]
    mean = train.mean(dim=reduce, keepdim=True)
    std = train.std(dim=reduce, keepdim=True, unbiased=False).clamp(min=_MIN_STD)
    return (train - mean) / std, (test - mean) / std


def linear_probe_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Linear-probe top-1 accuracy: multinomial logistic regression on frozen summary features.

    The linear evaluation of self-supervised and agglomerative backbones (DINO, Caron et al.,
    ICCV 2021; AM-RADIO, Ranzinger et al., CVPR 2024), with a fixed small budget so it is cheap
    enough to run for every teacher and the merged model: features are standardized with the
    train split's per-channel mean and std, then a linear layer is fitted by full-batch AdamW
    (Loshchilov & Hutter, ICLR 2019) on the cross-entropy for ``epochs`` steps, weight decay on
    the weights only. The weights start from a normal draw seeded by ``seed`` and the bias at 0,
    so the number is reproducible.

    Args:
        train_features: ``[N, D]`` features the probe is fitted on.
        train_labels: ``[N]`` integer class indices.
        test_features: ``[M, D]`` features it is scored on.
        test_labels: ``[M]`` integer class indices.
        num_classes: number of classes; inferred as ``max label + 1`` when ``None``.
        epochs: full-batch optimisation steps.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay on the weight matrix.
        seed: seeds the weight initialisation.

    Returns:
        Top-1 accuracy on the test split in ``[0, 1]``.
    """
    _check_split(train_features, train_labels, name="train", feature_ndim=2)
    _check_split(test_features, test_labels, name="test", feature_ndim=2)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"feature widths differ: train {train_features.shape[1]}, test {test_features.shape[1]}"
        )
    classes = _resolve_num_classes(train_labels, test_labels, num_classes)
    device = train_features.device
    # Callers usually hold features made under no_grad / inference_mode; the probe needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        train = train_features.detach().float().clone()
        test = test_features.detach().float().clone().to(device)
        train, test = _standardize(train, test, channel_dim=1)
        targets = train_labels.detach().clone().long().to(device)
        weight, bias = _linear_params(train.shape[1], classes, seed=seed, device=device)
        optimizer = _adamw(weight, bias, lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(train @ weight.T + bias, targets).backward()
            optimizer.step()
        with torch.no_grad():
            predicted = (test @ weight.T + bias).argmax(dim=1).cpu()
    return (predicted == test_labels.cpu()).float().mean().item()


def _linear_params(
    in_features: int, out_features: int, *, seed: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(in_features)
    weight = (torch.randn(out_features, in_features, generator=generator) * scale * 0.01).to(device)
    return weight.requires_grad_(), torch.zeros(out_features, device=device, requires_grad=True)


def _adamw(weight: Tensor, bias: Tensor, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [
            {"params": [weight], "weight_decay": weight_decay},
            {"params": [bias], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def linear_seg_probe_miou(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    epochs: int = 20,
    lr: float = 0.05,
    seed: int = 0,
    ignore_index: int = 255,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
) -> float:
    """Linear semantic-segmentation probe mIoU on frozen dense features.

    The linear segmentation evaluation of DINOv2 (Oquab et al., TMLR 2024) and AM-RADIO
    (Ranzinger et al., CVPR 2024): a 1x1 convolution (one linear classifier shared by every
    position) maps the frozen ``[C, h, w]`` features to class logits, which are bilinearly
    upsampled to the label size and trained with a per-pixel cross-entropy that skips
    ``ignore_index``. Features are standardized per channel with train statistics (the frozen
    form of the batch norm in those probes' heads). Training is AdamW over mini-batches of
    ``batch_size`` images in an order drawn from ``seed``; the weights start from a seeded normal
    draw. The test split's mIoU is read from one
    :class:`~mergekit_vision.eval.metrics.ConfusionMatrix` over all its pixels, so it averages the
    classes present in the test labels or the predictions.

    Args:
        train_features: ``[N, C, h, w]`` dense features the probe is fitted on.
        train_labels: ``[N, H, W]`` integer class maps in ``[0, num_classes)`` or
            ``ignore_index``.
        test_features: ``[M, C, h', w']`` dense features it is scored on.
        test_labels: ``[M, H', W']`` integer class maps.
        num_classes: number of classes ``K``.
        epochs: passes over the train images.
        lr: AdamW learning rate.
        seed: seeds the weight initialisation and the image order.
        ignore_index: label value of pixels that are neither trained on nor scored.
        weight_decay: AdamW decoupled weight decay on the 1x1 conv's weights.
        batch_size: train images per optimisation step.

    Returns:
        mIoU on the test split in ``[0, 1]`` (NaN when every test pixel is ignored).
    """
    _check_split(train_features, train_labels, name="train", feature_ndim=4)
    _check_split(test_features, test_labels, name="test", feature_ndim=4)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"feature channels differ: train {train_features.shape[1]}, "
            f"test {test_features.shape[1]}"
        )
    confusion = ConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)
    counted = train_labels[train_labels != ignore_index]
    if counted.numel() and (counted.min() < 0 or counted.max() >= num_classes):
        raise ValueError(
            f"train labels must lie in [0, {num_classes}) or equal ignore_index {ignore_index}, "
            f"got range [{counted.min().item()}, {counted.max().item()}]"
        )
    device = train_features.device
    with torch.inference_mode(False), torch.enable_grad():
        train = train_features.detach().float().clone()
        test = test_features.detach().float().clone().to(device)
        train, test = _standardize(train, test, channel_dim=1)
        targets = train_labels.detach().clone().long().to(device)
        weight, bias = _fit_dense_probe(
            train,
            targets,
            num_classes=num_classes,
            lr=lr,
            weight_decay=weight_decay,
            epochs=epochs,
            seed=seed,
            ignore_index=ignore_index,
            batch_size=batch_size,
        )
        with torch.no_grad():
            for start in range(0, test.shape[0], batch_size):
                labels = test_labels[start : start + batch_size]
                logits = _dense_logits(
                    test[start : start + batch_size], weight, bias, size=labels.shape[-2:]
                )
                confusion.update(logits.argmax(dim=1).cpu(), labels.cpu().long())
    return confusion.miou()


def _dense_logits(
    features: Tensor, weight: Tensor, bias: Tensor, *, size: tuple[int, int] | torch.Size
) -> Tensor:
    """``[B, K, H, W]`` upsampled logits of a 1x1 conv, ``weight [K, C]``, on ``[B, C, h, w]``."""
    logits = torch.einsum("bchw,kc->bkhw", features, weight) + bias[None, :, None, None]
    return upsample_logits(logits, tuple(size))


def _fit_dense_probe(
    features: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    lr: float,
    weight_decay: float,
    epochs: int,
    seed: int,
    ignore_index: int,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Fit the 1x1 conv ``(weight [K, C], bias [K])`` on standardized ``[N, C, h, w]`` features."""
    weight, bias = _linear_params(features.shape[1], num_classes, seed=seed, device=features.device)
    optimizer = _adamw(weight, bias, lr=lr, weight_decay=weight_decay)
    order_generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=order_generator)
        for batch in order.to(features.device).split(batch_size):
            batch_targets = targets[batch]
            if bool((batch_targets == ignore_index).all()):
                continue  # cross-entropy over zero pixels is NaN
            logits = _dense_logits(features[batch], weight, bias, size=batch_targets.shape[-2:])
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits, batch_targets, ignore_index=ignore_index).backward()
            optimizer.step()
    return weight.detach(), bias.detach()
