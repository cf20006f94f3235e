"""Relative depth: AbsRel and delta1 after per-image scale-and-shift alignment, the zero-shot
protocol of MiDaS (Ranftl et al., TPAMI 2022, arXiv 1907.01341) and Depth Anything (Yang et al.,
CVPR 2024, arXiv 2401.10891, sec. 4.2).

A relative model's map is known only up to a scale and a shift per image, and for disparity
models (Depth Anything, MiDaS, DPT) in inverse depth. Per image, on the pixels with ground truth:

1. the prediction is taken as disparity (a model whose map holds depth is inverted first) and
   fitted by least squares, ``s * p + t``, to the ground truth's disparity ``1 / d``;
2. aligned disparities below ``1 / max_depth`` are raised to it (MiDaS's cap: no aligned depth
   beyond the evaluated range, nor a negative one), and inverted back to depth ``d^``;
3. ``AbsRel = mean |d^ - d| / d`` and ``delta1 = mean [max(d^ / d, d / d^) < 1.25]``.

Both are averaged over images. Ground truth above ``max_depth`` (when given) is not scored;
without it the cap is each image's largest ground-truth depth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import batches
from mergekit_vision.losses.ssi import least_squares_aligned
from mergekit_vision.registry import PluginParams

DELTA = 1.25  # delta1's threshold (Eigen et al., NIPS 2014)
_EPS = 1e-8


def depth_errors(
    prediction: Tensor, truth: Tensor, *, space: str = "disparity", max_depth: float | None = None
) -> tuple[float, float] | None:
    """``(AbsRel, delta1)`` of one image after alignment, or None with under two depths.

    Args:
        prediction: ``[H, W]`` the model's map on the ground truth's grid.
        truth: ``[H, W]`` depth in metres, 0 (or not finite) where there is none.
        space: what ``prediction`` holds: ``disparity`` or ``depth``.
        max_depth: the evaluated range's end; None: the image's largest depth.
    """
    valid = torch.isfinite(truth) & (truth > 0) & torch.isfinite(prediction)
    if max_depth is not None:
        valid &= truth <= max_depth
    if int(valid.sum()) < 2:
        return None
    depth = truth[valid].double()
    scores = prediction[valid].double()
    if space == "depth":
        scores = 1.0 / scores.clamp_min(_EPS)
    aligned = least_squares_aligned(scores[None], 1.0 / depth[None])[0]
    cap = float(depth.max()) if max_depth is None else max_depth
    estimate = 1.0 / aligned.clamp_min(1.0 / cap)
    absrel = ((estimate - depth).abs() / depth).mean()
    delta1 = (torch.maximum(estimate / depth, depth / estimate) < DELTA).double().mean()
    return float(absrel), float(delta1)


@METRICS.register("relative_depth")
class RelativeDepth(Metric):
    """AbsRel and delta1 of relative depth after per-image least-squares scale-and-shift
    alignment in disparity space (MiDaS / Depth Anything's zero-shot protocol)."""

    needs = frozenset({"depth"})
    reads = "depth"
    values = (Value("depth_absrel", higher_is_better=False), Value("depth_delta1"))
    ability = "relative depth"

    class Params(PluginParams):
        max_depth: float | None = Field(
            None,
            gt=0,
            description="metres: deeper ground truth is not scored, and aligned depth is capped "
            "here (NYUv2: 10, KITTI: 80); default: each image's largest depth",
        )

    @torch.no_grad()
    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        scores: list[tuple[float, float]] = []
        space = model.depth_space  # what the model's maps hold: "disparity" or "depth"
        for batch in batches(dataset, batch_size=evaluation.spec.batch_size):
            truth = batch["depth"].float()
            maps = model.depth_maps(batch["image"]).float()
            maps = F.interpolate(maps, size=truth.shape[-2:], mode="bilinear", align_corners=False)
            for prediction, image_truth in zip(maps[:, 0].cpu(), truth.cpu(), strict=True):
                found = depth_errors(
                    prediction, image_truth, space=space, max_depth=self.params.max_depth
                )
                if found is not None:
                    scores.append(found)
        if not scores:
            return {}
        absrel, delta1 = (sum(column) / len(scores) for column in zip(*scores, strict=True))
        return {"depth_absrel": absrel, "depth_delta1": delta1}
