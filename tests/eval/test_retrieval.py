"""Retrieval recall on constructed embeddings whose rankings are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mergekit_vision.eval.retrieval import retrieval_recall


def test_a_permutation_of_captions_gives_the_fraction_of_fixed_points() -> None:
    # Images are the basis vectors e0..e3; caption t is e_perm[t] but describes image t. Captions
    # 0 and 1 sit on their images (cosine 1), captions 2 and 3 are swapped (cosine 0 with their
    # image, 1 with the other): R@1 = 2/4 both ways, and at k = N = 4 everything is found.
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 1, 3, 2]]
    recall = retrieval_recall(images, texts, torch.arange(4), ks=(1, 4))
    assert recall == {
        "image_to_text_R@1": 0.5,
        "image_to_text_R@4": 1.0,
        "text_to_image_R@1": 0.5,
        "text_to_image_R@4": 1.0,
    }


def _circle(count: int, shifts: list[int], epsilon: float = 0.05):
    """Images at angles 2 pi i / count; caption t at image (t + shifts[t])'s angle + epsilon."""
    step = 2 * math.pi / count
    angles = torch.arange(count) * step
    images = torch.stack([angles.cos(), angles.sin()], dim=1)
    caption_angles = (torch.arange(count) + torch.tensor(shifts)) * step + epsilon
    texts = torch.stack([caption_angles.cos(), caption_angles.sin()], dim=1)
    return images, texts


def test_text_to_image_ranks_on_a_circle() -> None:
    # A caption placed at image p (+ a small epsilon) ranks the images p, p+1, p-1, p+2, p-2,
    # p+3, p-3, p+4 (the epsilon puts p+d ahead of p-d). Its own image is t = p - shift, so the
    # shifts 0, 0, 1, -1, 2, -2, 3, 4 put it at ranks 1, 1, 3, 2, 5, 4, 7, 8:
    # R@1 = 2/8, R@5 = 6/8.
    images, texts = _circle(8, [0, 0, 1, -1, 2, -2, 3, 4])
    recall = retrieval_recall(images, texts, torch.arange(8))
    assert recall["text_to_image_R@1"] == pytest.approx(0.25)
    assert recall["text_to_image_R@5"] == pytest.approx(0.75)
    # Cosine: scaling any embedding changes nothing.
    scale = torch.linspace(0.5, 4.0, 8)[:, None]
    assert retrieval_recall(images * scale, texts * scale.flip(0), torch.arange(8)) == recall


def test_an_image_is_found_when_any_of_its_captions_is() -> None:
    # Texts are the basis vectors, so each image's row of cosines is its row below divided by a
    # positive norm: the ranking within a row is the row's own order. Two captions per image.
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # caption 1 first: rank 1
            [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5],  # caption 2 after 0.9, 0.8: rank 3
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.2, 0.3],  # caption 4 after four: rank 5
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1],  # caption 6 after six: rank 7
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    recall = retrieval_recall(scores, torch.eye(8), text_to_image, ks=(1, 3, 5))
    assert recall["image_to_text_R@1"] == 0.25
    assert recall["image_to_text_R@3"] == 0.5
    assert recall["image_to_text_R@5"] == 0.75
    assert list(recall)[:3] == ["image_to_text_R@1", "image_to_text_R@3", "image_to_text_R@5"]


def test_ties_rank_the_lower_index_first() -> None:
    # Every embedding is the same, so every similarity ties.
    # Text to image: every caption retrieves image 0 first; only caption 2 describes it -> 1/4.
    # Image to text: image i's first own caption is preceded by the lower-indexed captions:
    # image 0 -> caption 2 (rank 3), image 1 -> caption 0 (rank 1), image 2 -> caption 3 (rank 4).
    same = torch.ones(3, 2)
    recall = retrieval_recall(same, torch.ones(4, 2), torch.tensor([1, 1, 0, 2]), ks=(1, 3, 4))
    assert recall["text_to_image_R@1"] == 0.25
    assert recall["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert recall["image_to_text_R@3"] == pytest.approx(2 / 3)
    assert recall["image_to_text_R@4"] == 1.0


def test_bad_inputs_are_named() -> None:
    images, texts = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption \(first: \[2\]\)"):
        retrieval_recall(images, texts, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"text_to_image values must lie in \[0, 3\)"):
        retrieval_recall(images, texts, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="embedding widths differ"):
        retrieval_recall(images, torch.eye(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match="ks must be positive integers"):
        retrieval_recall(images, texts, torch.arange(3), ks=(0,))


def _sorted_reference(images, texts, text_to_image, k):
    """Recall@k from full stable sorts of the cosine matrix."""
    images = torch.nn.functional.normalize(images, dim=1)
    texts = torch.nn.functional.normalize(texts, dim=1)
    similarity = images @ texts.T
    order = similarity.argsort(dim=1, descending=True, stable=True)[:, :k]
    image_hits = (text_to_image[order] == torch.arange(len(images))[:, None]).any(dim=1)
    order = similarity.T.argsort(dim=1, descending=True, stable=True)[:, :k]
    text_hits = (order == text_to_image[:, None]).any(dim=1)
    return image_hits.double().mean().item(), text_hits.double().mean().item()


def test_counting_ranks_matches_sorting_on_random_embeddings() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(40, 8, generator=generator)
    text_to_image = torch.arange(40).repeat_interleave(5)
    texts = images[text_to_image] + 1.5 * torch.randn(200, 8, generator=generator)
    recall = retrieval_recall(images, texts, text_to_image, ks=(1, 5, 10))
    for k in (1, 5, 10):
        image_to_text, text_to_image_recall = _sorted_reference(images, texts, text_to_image, k)
        assert recall[f"image_to_text_R@{k}"] == image_to_text
        assert recall[f"text_to_image_R@{k}"] == text_to_image_recall
    assert 0.0 < recall["text_to_image_R@1"] < recall["text_to_image_R@10"] < 1.0
