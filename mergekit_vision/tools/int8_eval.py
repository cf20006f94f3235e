"""What int8 costs in accuracy: a trained run's eval metrics, fp32 against int8 linear layers.

The int8 model is the run's merged model with every linear layer computing what onnxruntime's
dynamically quantized graph computes (:func:`~mergekit_vision.tools.quantization.emulate_int8`):
it runs through ``vmerge eval``'s own metrics and data, so the numbers are comparable with
``eval.json``. This measures the accuracy effect of the quantization, not its speed (that is
``vmerge bench --inference``'s ``ort_int8``). Evaluating through the ONNX graphs instead would need
every evaluation ability (batched prompts, per-patch embeddings) rebuilt around onnxruntime
sessions; the emulation gets the same numbers from the model the evaluation already knows, and
the bench reports how far it is from the int8 graph on the same model (:func:`int8_agreement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.eval.evaluate import load_merged, locate_run
from mergekit_vision.eval.metric import METRICS
from mergekit_vision.eval.report import Evaluation
from mergekit_vision.tools.quantization import emulate_int8, relative_error

if TYPE_CHECKING:
    from mergekit_vision.tools.inference_systems import System

# Zero-shot top-1 (CLIP's ability) and point / box mIoU and mask AP (SAM's).
INT8_METRICS = ("zeroshot_top1", "promptable_segmentation")


def int8_metric_change(
    run_dir: str | Path, *, metrics: Sequence[str] = INT8_METRICS
) -> dict[str, Any]:
    """The merged model's values of ``metrics`` (registered metric names) at the eval section's
    main resolution, fp32 and int8, and their change (int8 - fp32)."""
    folder, recipe = locate_run(Path(run_dir), None)
    if recipe.eval is None:
        raise RecipeError(
            str(folder), [Issue("eval", "the run's recipe has no eval section: nothing to score")]
        )
    components = load_merged(folder, recipe)
    evaluation = Evaluation(components)
    configured = {metric.registry_name: metric for metric in evaluation.metrics}
    evaluation.metrics = [
        configured.get(name) or METRICS.get(name).build(METRICS.get(name).Params())
        for name in metrics
    ]
    side = evaluation.spec.resolution
    fp32 = _values(evaluation.measure(evaluation.merged, side))
    emulate_int8(components.model, in_place=True)
    int8 = _values(evaluation.measure(evaluation.merged, side))
    return {
        "run": str(folder),
        "resolution": side,
        "metrics": list(metrics),
        "fp32": fp32,
        "int8": int8,
        "change": {key: int8[key] - fp32[key] for key in fp32 if key in int8},
    }


def _values(row: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in row.items() if isinstance(value, int | float)}


def int8_agreement(system: System, files: dict[str, str], batch: int = 8) -> dict[str, float]:
    """How far the int8 graphs' outputs are from the fp32 graphs' on a batch of images:
    relative error of the zero-shot logits and of SAM's image embedding, top-1 agreement, and
    the IoU of each image's point mask (each from its own embedding); for the merged model also
    how far :func:`~mergekit_vision.tools.quantization.emulate_int8` is from the int8 graph."""
    import onnxruntime

    images = system.encoder_inputs(batch, seed=2)
    feed = {name: t.numpy() for name, t in zip(system.input_names, images, strict=True)}
    prompt = system.point_prompt()
    outputs = {}
    for kind in ("ort", "ort_int8"):
        encoder = onnxruntime.InferenceSession(files[f"{kind}_encoder"])
        decoder = onnxruntime.InferenceSession(files[f"{kind}_decoder"])
        logits, embeddings = encoder.run(None, feed)
        names = [node.name for node in decoder.get_inputs()]
        prompt_feed = dict(zip(names[1:], (t.numpy() for t in prompt), strict=True))
        masks = [
            decoder.run(None, {names[0]: embeddings[i : i + 1], **prompt_feed})[0]
            for i in range(len(embeddings))
        ]
        outputs[kind] = (logits, embeddings, np.concatenate(masks) > 0)
    (logits, embeddings, masks), (logits8, embeddings8, masks8) = (
        outputs["ort"],
        outputs["ort_int8"],
    )
    union = (masks | masks8).reshape(len(masks), -1).sum(1)
    inter = (masks & masks8).reshape(len(masks), -1).sum(1)
    agreement = {
        "logits_relative_error": relative_error(logits8, logits),
        "top1_agreement": float((logits8.argmax(1) == logits.argmax(1)).mean()),
        "sam_embedding_relative_error": relative_error(embeddings8, embeddings),
        "point_mask_iou": float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0))),
    }
    if system.name == "merged":
        with torch.no_grad():
            emulated = emulate_int8(system.encoder)(*images)
        agreement["emulation_relative_error"] = max(
            relative_error(ours.numpy(), theirs)
            for ours, theirs in zip(emulated, (logits8, embeddings8), strict=True)
        )
    return agreement
