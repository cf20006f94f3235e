"""What int8 costs in accuracy: a trained run's eval metrics, fp32 against int8 linear layers.

The int8 model is the run's merged model with every linear layer computing what onnxruntime's
dynamically quantized graph computes (:func:`~mergekit_vision.tools.quantization.emulate_int8`):
it runs through ``vmerge eval``'s own metrics and data, so the numbers are comparable with
``eval.json``. This measures the accuracy effect of the quantization, not its speed (that is
``vmerge bench --inference``'s ``ort_int8``). Evaluating through the ONNX graphs instead would need
every evaluation ability (batched prompts, per-patch embeddings) rebuilt around onnxruntime
sessions; the emulation gets the same numbers from the model the evaluation already knows, and
the bench reports how far it is from the int8 graph on the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.eval.evaluate import load_merged, locate_run
from mergekit_vision.eval.metric import METRICS
from mergekit_vision.eval.report import Evaluation
from mergekit_vision.tools.quantization import emulate_int8

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
