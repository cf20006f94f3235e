"""``vmerge eval``: every model's abilities on the recipe's evaluation data, as ``eval.json``, a
printed table and a picture grid.

Models: the CLIP teacher, the SAM teacher, the two-model SAM-then-CLIP pipeline, and the merged
model (at the main resolution and at each extra one: a merged model must not switch modes with
resolution, AM-RADIO arXiv 2312.06709).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from mergekit_vision.engine.build import Components
from mergekit_vision.eval.models import ClipTeacherEval, MergedEval, SamTeacherEval
from mergekit_vision.eval.pipeline import SamThenClip
from mergekit_vision.eval.reuse import fingerprint, load_teacher_rows, save_teacher_rows
from mergekit_vision.eval.tasks import (
    Labeler,
    Segmenter,
    batches,
    class_text_embeddings,
    dense_labeler,
    dense_segmenter,
    promptable_segmentation,
    refined_segmenter,
    semantic_segmentation,
    zero_shot_top1,
)
from mergekit_vision.recipe.schema import DatasetSpec, EvalSpec, task_of_head
from mergekit_vision.registry import DATASETS

METRICS = (
    "zeroshot_cls_top1",
    "prompt_seg_miou",
    "prompt_seg_miou_box",
    "mask_ap",
    "semseg_miou",
    "semseg_miou_refined",
    "seconds_per_image",
    "gflops_per_image",
)


class Evaluation:
    def __init__(self, components: Components, *, templates: list[str] | None = None):
        spec = components.recipe.eval
        if spec is None:
            raise ValueError("the recipe has no 'eval' section; add one to use vmerge eval")
        self.spec: EvalSpec = spec
        self.seed = components.recipe.seed
        self.recipe = components.recipe
        self.clip = ClipTeacherEval(components.teachers[spec.clip_teacher])
        self.sam = SamTeacherEval(components.teachers[spec.sam_teacher])
        self.merged = MergedEval(
            components.model,
            clip_head=spec.clip_head,
            sam_head=spec.sam_head,
            clip_task=task_of_head(components.recipe.tasks, spec.clip_head),
        )
        self.templates = templates or spec.templates

    def dataset(self, spec: DatasetSpec | None, resolution: int) -> Any:
        if spec is None:
            return None
        return DATASETS.get(spec.type).build(
            spec.params, resolution=resolution, resize="pad", seed=self.seed
        )

    def run(self) -> dict[str, Any]:
        main = self.spec.resolution
        results: dict[str, Any] = {
            "resolution": main,
            "models": {"clip_teacher": {}, "sam_teacher": {}, "pipeline": {}, "merged": {}},
            "samples": {},
        }
        models = results["models"]
        models["merged"]["by_resolution"] = {}
        for resolution in [main, *self.spec.extra_resolutions]:
            merged = self._merged(resolution, results["samples"] if resolution == main else {})
            models["merged"]["by_resolution"][str(resolution)] = merged
            if resolution == main:
                models["merged"].update(merged)
        models.update(self._teacher_rows(main))
        return results

    def _teacher_rows(self, main: int) -> dict[str, Any]:
        """The teachers' and the pipeline's rows, read from ``eval.teacher_results`` when it
        holds them for the same teachers and data (see ``eval/reuse.py``)."""
        store = self.spec.teacher_results
        if store is None:
            return self._measure_teachers(main)
        key = fingerprint(self.recipe)
        rows = load_teacher_rows(store, key)
        if rows is None:
            rows = self._measure_teachers(main)
            save_teacher_rows(store, key, rows)
        return rows

    def _measure_teachers(self, main: int) -> dict[str, Any]:
        return {
            "clip_teacher": self._clip_teacher(main),
            "sam_teacher": self._sam_teacher(main),
            "pipeline": self._pipeline(main),
        }

    def _texts(self, dataset: Any, *, skip_background: bool) -> torch.Tensor:
        names = dataset.class_names[1:] if skip_background else dataset.class_names
        return class_text_embeddings(self.clip, names, self.templates)

    def _semseg(self, prepare, dataset, **labelers: Labeler) -> dict[str, dict[str, Any]]:
        """Each labeler's mIoU and threshold, all reading the same ``prepare`` per batch."""
        return semantic_segmentation(
            prepare,
            labelers,
            dataset,
            num_classes=len(dataset.class_names) - 1,
            calibration=self.spec.calibration_samples,
            batch_size=self.spec.batch_size,
        )

    def _merged(self, resolution: int, samples: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        classes = self.dataset(self.spec.classification, resolution)
        if classes is not None:
            texts = self._texts(classes, skip_background=False)
            out["zeroshot_cls_top1"] = zero_shot_top1(
                self.merged, classes, texts, batch_size=self.spec.batch_size
            )
            samples["classification"] = len(classes)
        instances = self.dataset(self.spec.instances, resolution)
        if instances is not None:
            out.update(
                promptable_segmentation(
                    self.merged,
                    instances,
                    max_prompts=self.spec.max_prompts_per_image,
                    batch_size=self.spec.batch_size,
                )
            )
            samples["instances"] = len(instances)
        semantic = self.dataset(self.spec.semantic, resolution)
        if semantic is not None:
            texts = self._texts(semantic, skip_background=True)
            refiner = refined_segmenter(
                self.merged,
                texts,
                points_per_class=self.spec.points_per_class,
                mask_class=self.spec.refined_mask_class,
            )
            # The CLIP head's own labels read the refiner's encoder pass (its patch embeddings).
            head_only = dense_labeler(texts)
            results = self._semseg(
                refiner.prepare,
                semantic,
                refined=refiner.labels,
                head=lambda prepared, thresholds: head_only(prepared[1:3], thresholds),
            )
            head, refined = results["head"], results["refined"]
            out.update(
                semseg_miou=head["miou"],
                semseg_threshold=head["threshold"],
                semseg_miou_refined=refined["miou"],
                semseg_refined_threshold=refined["threshold"],
            )
            out.update(self._cost(lambda x: refiner(x, refined["threshold"]), semantic))
            samples["semantic"] = len(semantic) - self.spec.calibration_samples
        return out

    def _clip_teacher(self, resolution: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        classes = self.dataset(self.spec.classification, resolution)
        if classes is not None:
            texts = self._texts(classes, skip_background=False)
            out["zeroshot_cls_top1"] = zero_shot_top1(
                self.clip, classes, texts, batch_size=self.spec.batch_size
            )
        semantic = self.dataset(self.spec.semantic, resolution)
        if semantic is not None:
            texts = self._texts(semantic, skip_background=True)
            dense = dense_segmenter(self.clip, texts)
            result = self._semseg(dense.prepare, semantic, dense=dense.labels)["dense"]
            out.update(semseg_miou=result["miou"], semseg_threshold=result["threshold"])
        return out

    def _sam_teacher(self, resolution: int) -> dict[str, Any]:
        instances = self.dataset(self.spec.instances, resolution)
        if instances is None:
            return {}
        return promptable_segmentation(
            self.sam,
            instances,
            max_prompts=self.spec.max_prompts_per_image,
            batch_size=self.spec.batch_size,
        )

    def _pipeline(self, resolution: int) -> dict[str, Any]:
        semantic = self.dataset(self.spec.semantic, resolution)
        if semantic is None:
            return {}
        texts = self._texts(semantic, skip_background=True)
        pipeline = SamThenClip(
            sam=self.sam, clip=self.clip, texts=texts, grid=self.spec.pipeline_grid
        )
        segmenter = Segmenter(prepare=pipeline.prepare, labels=pipeline.labels)
        result = self._semseg(pipeline.prepare, semantic, pipeline=pipeline.labels)["pipeline"]
        out = {"semseg_miou": result["miou"], "semseg_threshold": result["threshold"]}
        out.update(self._cost(lambda x: segmenter(x, result["threshold"]), semantic))
        return out

    def _cost(self, segment, dataset, images: int = 4) -> dict[str, float]:
        """Wall time and FLOPs (torch's FLOP counter) per image of semantic segmentation."""
        batch = next(batches(dataset, batch_size=images))["image"]
        started = time.perf_counter()
        for image in batch:
            segment(image[None])
        seconds = (time.perf_counter() - started) / len(batch)
        counter = FlopCounterMode(display=False)
        with counter:
            segment(batch[:1])
        return {"seconds_per_image": seconds, "gflops_per_image": counter.get_total_flops() / 1e9}


def write_results(results: dict[str, Any], output_dir: Path) -> Path:
    path = output_dir / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    return path


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    models = results["models"]
    table = Table(title=f"vmerge eval at {results['resolution']} px", show_lines=False)
    table.add_column("metric", no_wrap=True, min_width=len("semseg_miou_refined"))
    for name in models:
        table.add_column(name, justify="right")
    for metric in METRICS:
        row = [_fmt(models[name].get(metric)) for name in models]
        if any(cell != "-" for cell in row):
            table.add_row(metric, *row)
    console.print(table)
    by_resolution = models["merged"].get("by_resolution", {})
    if len(by_resolution) > 1:
        table = Table(title="merged model across resolutions")
        table.add_column("metric", no_wrap=True, min_width=len("semseg_miou_refined"))
        for resolution in by_resolution:
            table.add_column(f"{resolution} px", justify="right")
        for metric in METRICS[:6]:
            table.add_row(metric, *[_fmt(r.get(metric)) for r in by_resolution.values()])
        console.print(table)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
