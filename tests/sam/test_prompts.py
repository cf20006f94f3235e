"""SAM-style prompt sampling from masks and from the teacher's own masks."""

import pytest
import torch

from mergekit_vision.contracts import Prompts
from mergekit_vision.sam.prompts import PromptSampler, PromptSamplerParams


def _square_masks(squares: list[tuple[int, int, int]], size: int = 32) -> torch.Tensor:
    """``bool [M, size, size]`` masks of squares given as (top, left, side)."""
    masks = torch.zeros(len(squares), size, size, dtype=torch.bool)
    for i, (top, left, side) in enumerate(squares):
        masks[i, top : top + side, left : left + side] = True
    return masks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inside(mask: torch.Tensor, point: torch.Tensor, scale: float = 1.0) -> bool:
    x, y = (point / scale).floor().long().tolist()
    return bool(mask[y, x])


SQUARES = [[(2, 3, 5), (10, 20, 8), (25, 1, 4)], [(0, 0, 32), (5, 5, 1)]]


def test_points_lie_inside_masks_and_boxes_cover_them() -> None:
    masks = [_square_masks(squares) for squares in SQUARES]
    sampler = PromptSampler(points_per_image=3, boxes_per_image=2, box_noise=0.0)
    prompts = sampler.from_masks(masks, image_size=32, generator=_gen())
    assert isinstance(prompts, Prompts) and prompts.count == 5 and prompts.batch_size == 2
    assert prompts.points.shape == (2, 3, 1, 2) and prompts.point_labels.shape == (2, 3, 1)
    assert (prompts.point_labels == 1).all() and prompts.boxes.shape == (2, 2, 4)
    for b, image_masks in enumerate(masks):
        for point in prompts.points[b, :, 0]:
            assert any(_inside(m, point) for m in image_masks)
        tight = {(left, top, left + side, top + side) for top, left, side in SQUARES[b]}
        for box in prompts.boxes[b]:
            assert tuple(int(v) for v in box.tolist()) in tight
    # three masks, three points: each mask gets one point before any is reused
    hits = [
        next(i for i, m in enumerate(masks[0]) if _inside(m, p)) for p in prompts.points[0, :, 0]
    ]
    assert sorted(hits) == [0, 1, 2]


def test_masks_are_reused_when_too_few_and_coordinates_scale() -> None:
    masks = [_square_masks([(8, 12, 3)], size=16)]
    sampler = PromptSampler(points_per_image=6, boxes_per_image=2, box_noise=0.0)
    prompts = sampler.from_masks(masks, image_size=64, generator=_gen())
    for point in prompts.points[0, :, 0]:
        assert _inside(masks[0][0], point, scale=4.0)
    assert prompts.boxes[0].tolist() == [[48.0, 32.0, 60.0, 44.0]] * 2


def test_box_noise_stays_in_the_image_and_keeps_boxes_ordered() -> None:
    masks = [_square_masks([(0, 0, 10), (20, 20, 12)])] * 4
    sampler = PromptSampler(points_per_image=0, boxes_per_image=16, box_noise=0.5)
    prompts = sampler.from_masks(masks, image_size=32, generator=_gen())
    assert prompts.points is None and prompts.point_labels is None
    boxes = prompts.boxes
    assert boxes.min() >= 0 and boxes.max() <= 32
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    exact = {(0.0, 0.0, 10.0, 10.0), (20.0, 20.0, 32.0, 32.0)}
    assert any(tuple(b.tolist()) not in exact for b in boxes.flatten(0, 1))


def test_images_without_masks_get_random_prompts() -> None:
    masks = [torch.zeros(0, 16, 16, dtype=torch.bool), torch.zeros(2, 16, 16, dtype=torch.bool)]
    sampler = PromptSampler(points_per_image=4, boxes_per_image=3)
    prompts = sampler.from_masks(masks, image_size=16, generator=_gen())
    assert prompts.points.shape == (2, 4, 1, 2) and prompts.boxes.shape == (2, 3, 4)
    assert prompts.points.min() >= 0 and prompts.points.max() < 16
    assert (prompts.boxes[..., 2:] >= prompts.boxes[..., :2]).all()


def test_same_generator_state_gives_the_same_prompts() -> None:
    masks = [_square_masks(SQUARES[0])] * 3
    sampler = PromptSampler(points_per_image=5, boxes_per_image=5)
    first = sampler.from_masks(masks, image_size=32, generator=_gen(1))
    again = sampler.from_masks(masks, image_size=32, generator=_gen(1))
    other = sampler.from_masks(masks, image_size=32, generator=_gen(2))
    assert torch.equal(first.points, again.points) and torch.equal(first.boxes, again.boxes)
    assert not torch.equal(first.points, other.points)
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(
        sampler.random_points(2, image_size=32, generator=_gen(5)).points,
        sampler.random_points(2, image_size=32, generator=_gen(5)).points,
    )


def test_random_points_cover_points_and_boxes() -> None:
    sampler = PromptSampler(points_per_image=3, boxes_per_image=2)
    prompts = sampler.random_points(4, image_size=64, generator=_gen())
    assert prompts.points.shape == (4, 5, 1, 2) and prompts.boxes is None
    assert (prompts.point_labels == 1).all() and prompts.point_labels.shape == (4, 5, 1)
    assert prompts.points.min() >= 0 and prompts.points.max() < 64


def test_boxes_from_teacher_masks() -> None:
    sampler = PromptSampler(points_per_image=1, boxes_per_image=2, box_noise=0.0)
    points = torch.tensor([[[[5.0, 5.0]], [[40.0, 8.0]], [[60.0, 60.0]]]])  # [1, 3, 1, 2]
    prompts = Prompts(
        image_size=64, points=points, point_labels=torch.ones(1, 3, 1, dtype=torch.long)
    )
    logits = torch.full((1, 3, 3, 16, 16), -5.0)  # [B, N, K, h, w], mask grid at 1/4 scale
    logits[0, 1, :, 1:4, 8:12] = 5.0  # the second point's mask, in every candidate
    # the third point's masks are empty: a box of side 64/10 around it
    out = sampler.boxes_from_teacher_masks(prompts, logits, generator=_gen())
    assert torch.equal(out.points, points[:, :1]) and out.point_labels.shape == (1, 1, 1)
    assert out.boxes.shape == (1, 2, 4)
    assert out.boxes[0, 0].tolist() == [32.0, 4.0, 48.0, 16.0]
    assert torch.allclose(out.boxes[0, 1], torch.tensor([56.8, 56.8, 63.2, 63.2]))


def test_teacher_boxes_mismatch_is_an_error() -> None:
    sampler = PromptSampler(points_per_image=1, boxes_per_image=1)
    prompts = sampler.random_points(2, image_size=32, generator=_gen())
    with pytest.raises(ValueError, match=r"\[B, Np\+Nb, K, h, w\]"):
        sampler.boxes_from_teacher_masks(prompts, torch.zeros(2, 3, 1, 8, 8), generator=_gen())


def test_params() -> None:
    params = PromptSamplerParams(points_per_image=2, boxes_per_image=1, source="teacher")
    sampler = PromptSampler.build(params)
    assert (sampler.points_per_image, sampler.boxes_per_image, sampler.box_noise) == (2, 1, 0.1)
    with pytest.raises(ValueError, match="source"):
        PromptSamplerParams(points_per_image=2, boxes_per_image=1, source="gt")
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptSampler(points_per_image=0, boxes_per_image=0)


def test_points_avoid_the_holes_of_non_convex_masks() -> None:
    ring = torch.zeros(2, 24, 24, dtype=torch.bool)  # mask 0 stays empty and is never picked
    ring[1, 4:20, 4:20] = True
    ring[1, 8:16, 8:16] = False
    sampler = PromptSampler(points_per_image=40, boxes_per_image=2, box_noise=0.0)
    prompts = sampler.from_masks([ring], image_size=24, generator=_gen())
    assert all(_inside(ring[1], p) for p in prompts.points[0, :, 0])
    assert prompts.boxes[0].tolist() == [[4.0, 4.0, 20.0, 20.0]] * 2
