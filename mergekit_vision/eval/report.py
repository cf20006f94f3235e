"""``vmerge eval``: every model's abilities on the recipe's evaluation data, as ``eval.json``, a
printed table and a picture grid.

Models are the recipe's teachers (``eval.teachers``, all of them by default) seen through what
they offer, the two-teacher mask-then-classify pipeline (when a promptable teacher and a
text-aligned teacher are evaluated), and the merged model through its heads (``eval.heads``), at
the main resolution and at each extra one: a merged model must not switch modes with resolution
(AM-RADIO, arXiv 2312.06709). Every metric of ``eval.metrics`` (all registered ones by default)
runs on every model that offers what it needs (:mod:`mergekit_vision.eval.metric`).

``eval.json`` schema::

    {
      "resolution": 128,                      # the main evaluation side in px
      "models": {                             # one object per model, in evaluation order
        "<teacher name>": {"<value key>": float, ...},
        "pipeline": {...},
        "merged": {"<value key>": float, ..., "by_resolution": {"<px>": {...}, ...},
                   "worst_resolution_ratio": float}  # the worst of "robustness"
      },
      "metrics": {                            # the values that ran, in table order
        "<value key>": {"metric": "<plugin>", "ability": "<group>", "higher_is_better": bool}
      },
      "robustness": {"merged": {"<value key>": float | null}},  # with extra_resolutions:
                                              # worst ratio at another side to the main one
      "samples": {"classification": int, "instances": int, "semantic": int},
      "feature_retention": {...},             # see eval/features.py
      "files": {"json": path, "picture": path}
    }

A value key is what a metric writes (``zeroshot_cls_top1``, ``prompt_seg_miou``, ...); a model
only has the keys of the metrics that applied to it. Keys a metric writes but does not list as
values (a calibrated ``semseg_threshold``) are in the model's object, not in ``metrics``.
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

from mergekit_vision.data.base import DATASETS
from mergekit_vision.engine.build import Components
from mergekit_vision.eval.metric import LAYOUTS, METRICS, Metric
from mergekit_vision.eval.models import MergedEval, teacher_eval
from mergekit_vision.eval.pipeline import TwoTeacherPipeline
from mergekit_vision.eval.probe_features import frozen_features
from mergekit_vision.eval.reuse import (
    evaluated_teachers,
    fingerprint,
    load_teacher_rows,
    save_teacher_rows,
)
from mergekit_vision.eval.robustness import robustness_table
from mergekit_vision.eval.tasks import batches, class_text_embeddings, semantic_segmentation
from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.recipe.schema import DatasetSpec, EvalSpec, task_of_head

TEXT_CAPABILITIES = frozenset({"text_image_embedding", "text_dense_embedding", "shared_encoder"})


def build_metrics(spec: EvalSpec) -> list[Metric]:
    """The eval section's metrics, or every registered one (by the data they read, simplest
    needs first, so a model's values come out in a stable order)."""
    if spec.metrics is not None:
        return [METRICS.get(m.type).build(m.params) for m in spec.metrics]
    classes = sorted(
        (entry.cls for entry in METRICS),
        key=lambda c: (LAYOUTS.index(c.reads) if c.reads in LAYOUTS else 99, len(c.needs)),
    )
    return [cls.build(cls.Params()) for cls in classes]


class Evaluation:
    """The models under evaluation and the metrics that measure them, for one built recipe."""

    def __init__(self, components: Components, *, templates: list[str] | None = None):
        spec = components.recipe.eval
        if spec is None:
            raise ValueError("the recipe has no 'eval' section; add one to use vmerge eval")
        self.spec: EvalSpec = spec
        self.seed = components.recipe.seed
        self.recipe = components.recipe
        self.templates = templates or spec.templates
        self.metrics = build_metrics(spec)
        self.teachers: dict[str, Any] = {}
        for name in evaluated_teachers(self.recipe):
            model = teacher_eval(components.teachers[name])
            if model is not None:
                self.teachers[name] = model
        self.pipeline = self._pipeline()
        self.merged = self._merged_model(components)
        self._texts_cache: dict[tuple[int, tuple[str, ...]], torch.Tensor] = {}
        self._features_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.resolution = spec.resolution

    def _pipeline(self) -> TwoTeacherPipeline | None:
        """The first promptable and the first text-aligned evaluated teacher, run in turn."""
        sam = next(
            (m for m in self.teachers.values() if "promptable_masks" in m.capabilities), None
        )
        clip = next(
            (m for m in self.teachers.values() if "text_image_embedding" in m.capabilities), None
        )
        if sam is None or clip is None:
            return None
        return TwoTeacherPipeline(sam=sam, clip=clip, grid=self.spec.pipeline_grid)

    def _merged_model(self, components: Components) -> MergedEval:
        heads = self.spec.heads if self.spec.heads is not None else list(components.model.heads)
        clip_head = _one_head(components, heads, ClipHead)
        sam_head = _one_head(components, heads, SamHead)
        clip_task = task_of_head(self.recipe.tasks, clip_head) if clip_head else None
        merged = MergedEval(
            components.model, clip_head=clip_head, sam_head=sam_head, clip_task=clip_task
        )
        tower = None
        if clip_task is not None:
            teacher = self.recipe.tasks[clip_task].teacher
            tower = self.teachers.get(teacher) or teacher_eval(components.teachers[teacher])
        if tower is None or "text_image_embedding" not in tower.capabilities:
            merged.capabilities = merged.capabilities - TEXT_CAPABILITIES
        else:
            merged.text_tower = tower
        return merged

    def dataset(self, spec: DatasetSpec | None, resolution: int) -> Any:
        if spec is None:
            return None
        return DATASETS.get(spec.type).build(
            spec.params, resolution=resolution, resize="pad", seed=self.seed
        )

    def run(self) -> dict[str, Any]:
        main = self.spec.resolution
        merged: dict[str, Any] = {}
        by_resolution: dict[str, Any] = {}
        for resolution in [main, *self.spec.extra_resolutions]:
            row = self.measure(self.merged, resolution)
            by_resolution[str(resolution)] = row
            if resolution == main:
                merged.update(row)
        merged["by_resolution"] = by_resolution
        models = {**self._teacher_rows(main), "merged": merged}
        metrics = self.metric_table(models)
        results = {"resolution": main, "models": models, "metrics": metrics}
        if len(by_resolution) > 1:
            ratios = resolution_robustness(by_resolution, metrics, reference=main)
            worst = min((r for r in ratios.values() if r is not None), default=None)
            if worst is not None:
                merged["worst_resolution_ratio"] = worst
            results["robustness"] = {"merged": ratios}
        results["samples"] = self._samples(main)
        return results

    def measure(self, model: Any, resolution: int) -> dict[str, Any]:
        """Every metric that applies to ``model`` and has its data, at ``resolution``."""
        row: dict[str, Any] = {}
        datasets: dict[str, Any] = {}
        self.resolution = resolution  # read by metrics that build data of their own (probes)
        for metric in self.metrics:
            data = getattr(self.spec, metric.reads, None)
            if data is None or not metric.applies_to(model):
                continue
            if metric.reads not in datasets:
                datasets[metric.reads] = self.dataset(data, resolution)
            row.update(metric.compute(model, datasets[metric.reads], self))
        return row

    def metric_table(self, models: dict[str, Any]) -> dict[str, Any]:
        """The values that ran, in metric order: the table's rows and compare's columns."""
        table: dict[str, Any] = {}
        for metric in self.metrics:
            for value in metric.values:
                if value.key in table or not any(value.key in row for row in models.values()):
                    continue
                table[value.key] = {
                    "metric": metric.registry_name,
                    "ability": metric.ability,
                    "higher_is_better": value.higher_is_better,
                }
        # quality first, then cost (lower is better), each in metric order
        return dict(sorted(table.items(), key=lambda item: not item[1]["higher_is_better"]))

    def _samples(self, main: int) -> dict[str, int]:
        samples = {}
        for layout in LAYOUTS:
            dataset = self.dataset(getattr(self.spec, layout), main)
            if dataset is not None:
                samples[layout] = len(dataset)
        if "semantic" in samples:
            samples["semantic"] -= self.spec.calibration_samples
        return samples

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
        rows = {name: self.measure(model, main) for name, model in self.teachers.items()}
        if self.pipeline is not None:
            rows["pipeline"] = self.measure(self.pipeline, main)
        return rows

    def texts(self, model: Any, dataset: Any, *, skip_background: bool) -> torch.Tensor:
        """``[K, D]`` class text embeddings from ``model``'s text tower (cached per tower)."""
        names = dataset.class_names[1:] if skip_background else dataset.class_names
        tower = model.text_tower
        key = (id(tower), tuple(names))
        if key not in self._texts_cache:
            self._texts_cache[key] = class_text_embeddings(tower, names, self.templates)
        return self._texts_cache[key]

    def features(
        self, model: Any, kind: str, data: DatasetSpec, label: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen ``summary`` or ``dense`` features of ``model`` on ``data`` at the current
        resolution, with each sample's ``label``; computed once per evaluation and shared by
        the probes that read them (k-NN and linear on the same summary features)."""
        key = (id(model), kind, data.model_dump_json(), self.resolution, label)
        if key not in self._features_cache:
            self._features_cache[key] = frozen_features(
                model, kind, self.dataset(data, self.resolution), label, self.spec.batch_size
            )
        return self._features_cache[key]

    def semseg(self, prepare, dataset, **labelers) -> dict[str, dict[str, Any]]:
        """Each labeler's mIoU and threshold, all reading the same ``prepare`` per batch."""
        return semantic_segmentation(
            prepare,
            labelers,
            dataset,
            num_classes=len(dataset.class_names) - 1,
            calibration=self.spec.calibration_samples,
            batch_size=self.spec.batch_size,
        )

    def cost(self, segment, dataset, images: int = 4) -> dict[str, float]:
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


def resolution_robustness(
    by_resolution: dict[str, dict[str, Any]], metrics: dict[str, Any], *, reference: int
) -> dict[str, float | None]:
    """Each quality value's worst ratio at another resolution to the main one (RADIOv2.5's
    flatness across resolutions); cost values, noisy timings, are left out."""
    quality = {key for key, about in metrics.items() if about["higher_is_better"]}
    per_resolution = {
        int(side): {k: v for k, v in row.items() if k in quality}
        for side, row in by_resolution.items()
    }
    return robustness_table(
        per_resolution, reference=reference, higher_is_better=dict.fromkeys(quality, True)
    )


def _one_head(components: Components, names: list[str], kind: type) -> str | None:
    found = [n for n in names if isinstance(components.model.heads[n], kind)]
    if len(found) > 1:
        raise ValueError(
            f"eval: the merged model has several {kind.__name__} heads ({', '.join(found)}); "
            "list the ones to evaluate in eval.heads"
        )
    return found[0] if found else None


def write_results(results: dict[str, Any], output_dir: Path) -> Path:
    path = output_dir / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    return path


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    """One column per model, the metrics' values in rows grouped by ability."""
    console = console or Console()
    models, metrics = results["models"], results.get("metrics", {})
    table = Table(title=f"vmerge eval at {results['resolution']} px", show_lines=False)
    # Values never shrink: on a narrow or piped console (80 columns) the ability names wrap.
    table.add_column("ability", max_width=14)
    table.add_column("metric", no_wrap=True, min_width=len("semseg_miou_refined"))
    for name in models:
        table.add_column(name, justify="right", no_wrap=True, min_width=5)
    for ability, keys in _by_ability(metrics).items():
        table.add_section()
        for i, key in enumerate(keys):
            row = [_fmt(models[name].get(key)) for name in models]
            table.add_row(ability if i == 0 else "", key, *row)
    console.print(table)
    by_resolution = models["merged"].get("by_resolution", {})
    if len(by_resolution) > 1:
        ratios = results.get("robustness", {}).get("merged", {})
        table = Table(title="merged model across resolutions")
        table.add_column("metric", no_wrap=True, min_width=len("semseg_miou_refined"))
        for resolution in by_resolution:
            table.add_column(f"{resolution} px", justify="right")
        table.add_column("worst ratio", justify="right")
        for key, about in metrics.items():
            if about["higher_is_better"]:
                cells = [_fmt(r.get(key)) for r in by_resolution.values()]
                table.add_row(key, *cells, _fmt(ratios.get(key)))
        console.print(table)


def _by_ability(metrics: dict[str, Any]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key, about in metrics.items():
        groups.setdefault(about["ability"], []).append(key)
    return groups


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
