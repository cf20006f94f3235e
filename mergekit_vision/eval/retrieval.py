"""Image-text retrieval recall at k, in both directions, from precomputed embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def retrieval_recall(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    *,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Recall@k of image-to-text and text-to-image retrieval by cosine similarity.

    The protocol of Flickr30k / MS-COCO retrieval on the Karpathy test splits (Karpathy & Fei-Fei,
    "Deep Visual-Semantic Alignments for Generating Image Descriptions", CVPR 2015), as reported
    by CLIP (Radford et al., ICML 2021) and SAM-CLIP (Wang et al., arXiv 2310.15308): every image
    ranks every caption and every caption ranks every image by cosine similarity. An image is
    retrieved correctly at k when any of its captions (five each in those sets) is among its k
    best texts; a caption when its own image is among its k best images. Recall@k is the fraction
    of images (image to text) or captions (text to image) retrieved correctly.

    Exact ties in similarity are ranked by the lower index first, as a stable sort would.

    Args:
        image_embeddings: ``[N, D]`` image embeddings in the shared space.
        text_embeddings: ``[T, D]`` caption embeddings.
        text_to_image: ``[T]`` integer index in ``[0, N)`` of the image each caption describes;
            every image needs at least one caption.
        ks: the cut-offs k reported.

    Returns:
        ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}`` for each k, in ``[0, 1]``
        (image-to-text keys first).
    """
    _check_inputs(image_embeddings, text_embeddings, text_to_image, ks)
    images = F.normalize(image_embeddings.detach().float(), dim=1)
    texts = F.normalize(text_embeddings.detach().float(), dim=1).to(images.device)
    text_to_image = text_to_image.to(images.device).long()
    similarity = images @ texts.T  # [N, T]
    owns = text_to_image[None, :] == torch.arange(images.shape[0], device=images.device)[:, None]
    image_ranks = _ranks_of_first_match(similarity, owns)
    text_ranks = _ranks_of_first_match(similarity.T, owns.T)
    recalls = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k in ks:
            recalls[f"{direction}_R@{k}"] = (ranks < k).double().mean().item()
    return recalls


def _ranks_of_first_match(similarity: Tensor, matches: Tensor) -> Tensor:
    """0-based rank, per query row, of its best-ranked matching item.

    Ranking is by descending similarity with ties to the lower index; the best match is thus the
    matching item of largest similarity, the lowest-indexed among equals. Its rank counts the
    items strictly more similar plus the lower-indexed items exactly as similar. Counting instead
    of sorting keeps the cost at one pass over the ``[queries, items]`` matrix.

    Args:
        similarity: ``[Q, I]`` query-to-item similarities.
        matches: ``[Q, I]`` bool, which items are correct for each query (one at least).

    Returns:
        ``[Q]`` int64 ranks.
    """
    best = similarity.masked_fill(~matches, -torch.inf).amax(dim=1, keepdim=True)
    best_index = (matches & (similarity == best)).int().argmax(dim=1, keepdim=True)
    index = torch.arange(similarity.shape[1], device=similarity.device)[None, :]
    ahead = (similarity > best) | ((similarity == best) & (index < best_index))
    return ahead.sum(dim=1)


def _check_inputs(
    image_embeddings: Tensor, text_embeddings: Tensor, text_to_image: Tensor, ks: Sequence[int]
) -> None:
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2 or text_to_image.ndim != 1:
        raise ValueError(
            f"retrieval_recall expects image embeddings [N, D], text embeddings [T, D] and "
            f"text_to_image [T], got {tuple(image_embeddings.shape)}, "
            f"{tuple(text_embeddings.shape)} and {tuple(text_to_image.shape)}"
        )
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"embedding widths differ: images {image_embeddings.shape[1]}, "
            f"texts {text_embeddings.shape[1]}"
        )
    if text_to_image.shape[0] != text_embeddings.shape[0]:
        raise ValueError(
            f"{text_embeddings.shape[0]} captions but {text_to_image.shape[0]} "
            "text_to_image entries"
        )
    if text_to_image.is_floating_point():
        raise TypeError("text_to_image must hold integer image indices")
    count = image_embeddings.shape[0]
    if count == 0 or text_to_image.numel() == 0:
        raise ValueError("retrieval_recall: no images or no captions")
    if text_to_image.min() < 0 or text_to_image.max() >= count:
        raise ValueError(
            f"text_to_image values must lie in [0, {count}), got range "
            f"[{text_to_image.min().item()}, {text_to_image.max().item()}]"
        )
    captioned = torch.bincount(text_to_image.long().cpu(), minlength=count)
    if bool((captioned == 0).any()):
        missing = (captioned == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"{len(missing)} image(s) have no caption (first: {missing[:5]}); image-to-text "
            "recall needs at least one per image"
        )
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
