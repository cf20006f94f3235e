"""Feature retention: how closely the merged model's heads reproduce each feature teacher.

For a teacher whose ability *is* its features (DINOv2's class token and patch features, a CLIP
image embedding), the direct measure of what the merged model kept is the agreement of its head
with the teacher on unseen images: AM-RADIO (Ranzinger et al., CVPR 2024, arXiv 2312.06709)
distils and probes exactly these summary and spatial features. Every task of the recipe whose
target needs no prompts is measured: the mean cosine similarity between the head's prediction and
the teacher's target (per image for vectors ``[B, D]``, per position for maps ``[B, C, h, w]``,
the prediction resized to the teacher's grid), next to the same cosine for a constant prediction,
the teacher's own mean target over the images: a head must beat that baseline to have learned
anything image-specific. ``centered_cosine`` measures that image-specific part directly: both
sides minus the teacher's mean target before the cosine (0 for the constant prediction, 1 for a
perfect one), which matters for teachers whose features share a large common component.

A depth teacher's ``depth`` map is no feature: it is known only up to a scale and a shift per
image, which a cosine does not forgive, so depth tasks are left to the ``relative_depth`` metric
(AbsRel and delta1 after scale-and-shift alignment, on the ``merged:<teacher>`` row).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor

from mergekit_vision.engine.build import Components
from mergekit_vision.eval.tasks import batches
from mergekit_vision.losses.feature import align_prediction

DEPTH_TARGET = "depth"


def feature_tasks(components: Components) -> list[str]:
    """The recipe's tasks whose teacher target needs no prompts and is no depth map (feature
    targets)."""
    names = []
    for name, task in components.tasks.items():
        spec = task.teacher.target_specs()[task.spec.target]
        # "depth" is the depth teachers' target (teachers/depth.py), as eval.models reads it
        if not spec.needs_prompts and task.spec.target != DEPTH_TARGET:
            names.append(name)
    return names


def _mean_cosine(prediction: Tensor, target: Tensor) -> float:
    """Mean cosine over vectors: rows of ``[B, D]``, positions of ``[B, C, h, w]``."""
    return float(F.cosine_similarity(prediction, target, dim=1).mean())


@torch.no_grad()
def feature_retention(
    components: Components, dataset: Any, *, batch_size: int, max_images: int = 64
) -> dict[str, dict[str, Any]]:
    """Per feature task: ``cosine`` and ``centered_cosine`` (merged head vs teacher),
    ``mean_baseline_cosine`` (a constant prediction vs teacher) and the number of images, all in
    the teacher's own feature space (a head trained on normalized targets is mapped back).

    Args:
        components: the built recipe with the trained model loaded.
        dataset: evaluation images (any dataset giving ``image``), at the evaluation resolution.
        batch_size: images per forward.
        max_images: the first this many images are used.
    """
    tasks = feature_tasks(components)
    if not tasks or dataset is None:
        return {}
    model = components.model.eval()
    predictions: dict[str, list[Tensor]] = {name: [] for name in tasks}
    targets: dict[str, list[Tensor]] = {name: [] for name in tasks}
    for batch in batches(dataset, batch_size=batch_size, stop=max_images):
        images = batch["image"].to(components.device)
        features = model.student(images)
        for name in tasks:
            task = components.tasks[name]
            target_name = task.spec.target
            head = model.heads[task.spec.head]
            prediction = head(features)[target_name]
            target = task.teacher(images, targets=[target_name])[target_name]
            if name in model.normalizers:  # the head predicts the normalized target:
                prediction = model.normalizers[name].denormalize(prediction)  # as the teacher
            predictions[name].append(prediction.cpu())
            targets[name].append(target.cpu())
    out: dict[str, dict[str, Any]] = {}
    for name in tasks:
        target = torch.cat(targets[name]).float()
        prediction = align_prediction(torch.cat(predictions[name]).float(), target, loss="eval")
        mean = target.mean(dim=0, keepdim=True)
        task = components.tasks[name]
        out[name] = {
            "teacher": task.spec.teacher,
            "target": task.spec.target,
            "cosine": _mean_cosine(prediction, target),
            "centered_cosine": _mean_cosine(prediction - mean, target - mean),
            "mean_baseline_cosine": _mean_cosine(mean.expand_as(target), target),
            "images": int(target.shape[0]),
        }
    return out


def evaluation_images(evaluation: Any) -> Any:
    """The evaluation's images for feature retention: semantic, else classification, else
    instance data, at the main resolution."""
    spec = evaluation.spec
    for data in (spec.semantic, spec.classification, spec.instances):
        if data is not None:
            return evaluation.dataset(data, spec.resolution)
    return None


def feature_retention_results(evaluation: Any, components: Components) -> dict[str, Any]:
    """``{"feature_retention": {...}}`` for ``eval.json`` (empty without feature tasks)."""
    found = feature_retention(
        components, evaluation_images(evaluation), batch_size=evaluation.spec.batch_size
    )
    return {"feature_retention": found} if found else {}


def print_feature_table(results: dict[str, Any], console: Console | None = None) -> None:
    found = results.get("feature_retention")
    if not found:
        return
    table = Table(title="feature retention: cosine(merged head, teacher) on eval images")
    for column in ("task", "teacher", "target", "cosine", "centered", "mean baseline"):
        table.add_column(column, justify="left" if column in ("task", "teacher") else "right")
    for name, row in found.items():
        table.add_row(
            name,
            row["teacher"],
            row["target"],
            f"{row['cosine']:.3f}",
            f"{row['centered_cosine']:.3f}",
            f"{row['mean_baseline_cosine']:.3f}",
        )
    (console or Console()).print(table)
