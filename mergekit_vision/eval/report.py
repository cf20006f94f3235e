"""``vmerge eval``: every model's abilities on the recipe's evaluation data, as ``eval.json``, a
printed table and a picture grid.

Models are the recipe's teachers (``eval.teachers``, all of them by default) seen through what
they offer, the two-teacher mask-then-classify pipeline (when a promptable teacher and a
text-aligned teacher are evaluated), the merged model through its heads (``eval.heads``), its
backbone's own tokens giving its frozen features, and, for each evaluated teacher whose feature
targets it distils, ``merged:<teacher>``: those heads' outputs as frozen features. Every model
is measured at the main resolution and at each extra one: a merged model must not switch modes
with resolution (AM-RADIO, arXiv 2312.06709; RADIOv2.5, arXiv 2412.07679). Every metric of
``eval.metrics`` (all registered ones by default) runs on every model that offers what it needs
(:mod:`mergekit_vision.eval.metric`).

``eval.json`` schema::

    {
      "resolution": 128,                      # the main evaluation side in px
      "models": {                             # one object per model, in evaluation order
        "<teacher name>": {"<value key>": float, ...,
                           "by_resolution": {"<px>": {"<value key>": float, ...}, ...},
                           "worst_resolution_ratio": float},   # the worst of "robustness"
        "pipeline": {...},                    # the same keys for every model
        "merged": {...},
        "merged:<teacher>": {...}
      },
      "metrics": {                            # the values that ran, in table order
        "<value key>": {"metric": "<plugin>", "ability": "<group>", "higher_is_better": bool}
      },
      "robustness": {"<model>": {"<value key>": float | null}},  # with extra_resolutions: the
                                              # worst ratio at another side to the main one
      "versus_teachers": {"<value key>": {"<teacher>": {
          "model": "merged" | "merged:<teacher>",  # the merged row compared
          "ratio": float, "above": bool}}},   # merged / teacher (inverted where lower is better)
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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mergekit_vision.data.base import DATASETS
from mergekit_vision.engine.build import Components
from mergekit_vision.eval.metric import LAYOUTS, METRICS, Metric
from mergekit_vision.eval.models import MergedEval, teacher_eval, teacher_views
from mergekit_vision.eval.pipeline import TwoTeacherPipeline
from mergekit_vision.eval.probe_features import FeatureStore, frozen_features
from mergekit_vision.eval.reuse import (
    evaluated_teachers,
    fingerprint,
    load_teacher_rows,
    save_teacher_rows,
    teacher_stamp,
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
        heads = self.spec.heads if self.spec.heads is not None else list(components.model.heads)
        views = teacher_views(components, heads)
        self.views = {t: view for t, view in views.items() if t in self.teachers}
        self._texts_cache: dict[tuple[int, tuple[str, ...]], torch.Tensor] = {}
        self._features_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.resolution = spec.resolution
        store = spec.teacher_results
        self.feature_store = FeatureStore(store.with_suffix(".features") if store else None)

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
        sides = [main, *self.spec.extra_resolutions]
        merged = {"merged": self.merged, **{f"merged:{t}": v for t, v in self.views.items()}}
        models = self._teacher_rows(sides)
        for name, model in merged.items():
            row = self.row(model, sides)
            if name == "merged" or any(row["by_resolution"].values()):  # a view no metric read
                models[name] = row
        metrics = self.metric_table(models)
        results = {"resolution": main, "models": models, "metrics": metrics}
        if len(sides) > 1:
            results["robustness"] = {}
            for name, row in models.items():
                ratios = resolution_robustness(row["by_resolution"], metrics, reference=main)
                worst = min((r for r in ratios.values() if r is not None), default=None)
                if worst is not None:
                    row["worst_resolution_ratio"] = worst
                results["robustness"][name] = ratios
        results["versus_teachers"] = versus_teachers(models, metrics, list(self.teachers))
        results["samples"] = self._samples(main)
        return results

    def row(self, model: Any, sides: list[int]) -> dict[str, Any]:
        """``model``'s values at the main side, with every side's in ``by_resolution``."""
        by_resolution = {str(side): self.measure(model, side) for side in sides}
        return {**by_resolution[str(sides[0])], "by_resolution": by_resolution}

    def measure(self, model: Any, resolution: int) -> dict[str, Any]:
        """Every metric that applies to ``model`` and has its data, at ``resolution``."""
        row: dict[str, Any] = {}
        datasets: dict[str, Any] = {}
        self.resolution = resolution  # read by metrics that build data of their own (probes)
        for metric in self.metrics:
            data = metric.data(self.spec)
            if data is None or not metric.applies_to(model):
                continue
            key = data.model_dump_json()
            if key not in datasets:
                datasets[key] = self.dataset(data, resolution)
            row.update(metric.compute(model, datasets[key], self))
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

    def _teacher_rows(self, sides: list[int]) -> dict[str, Any]:
        """The teachers' and the pipeline's rows, read from ``eval.teacher_results`` when it
        holds them for the same teachers and data (see ``eval/reuse.py``)."""
        store = self.spec.teacher_results
        if store is None:
            return self._measure_teachers(sides)
        key = fingerprint(self.recipe)
        rows = load_teacher_rows(store, key)
        if rows is None:
            rows = self._measure_teachers(sides)
            save_teacher_rows(store, key, rows)
        return rows

    def _measure_teachers(self, sides: list[int]) -> dict[str, Any]:
        rows = {name: self.row(model, sides) for name, model in self.teachers.items()}
        if self.pipeline is not None:
            rows["pipeline"] = self.row(self.pipeline, sides)
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
            dataset = self.dataset(data, self.resolution)
            compute = partial(frozen_features, model, kind, dataset, label, self.spec.batch_size)
            teacher = next((n for n, m in self.teachers.items() if m is model), None)
            if teacher is None:
                self._features_cache[key] = compute()
            else:  # a teacher's features outlive this evaluation (eval/reuse.py)
                about = {"teacher": teacher_stamp(self.recipe, teacher), "kind": kind,
                         "data": data.model_dump(mode="json"), "side": self.resolution,
                         "label": label}  # fmt: skip
                self._features_cache[key] = self.feature_store.get(about, compute)
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


def versus_teachers(
    models: dict[str, Any], metrics: dict[str, Any], teachers: list[str]
) -> dict[str, dict[str, Any]]:
    """For each metric, the merged model against each teacher that has it: the ratio (merged /
    teacher, or teacher / merged where lower is better, so above 1 is better) and which merged
    row it came from: ``merged:<teacher>`` (the heads standing in for that teacher) where it has
    the metric, else the backbone's own ``merged`` row."""
    table: dict[str, dict[str, Any]] = {}
    for key, about in metrics.items():
        for teacher in teachers:
            theirs = models.get(teacher, {}).get(key)
            source = f"merged:{teacher}" if key in models.get(f"merged:{teacher}", {}) else "merged"
            ours = models[source].get(key)
            if theirs is None or ours is None or not theirs or not ours:
                continue
            ratio = ours / theirs if about["higher_is_better"] else theirs / ours
            table.setdefault(key, {})[teacher] = {
                "model": source,
                "ratio": ratio,
                "above": ratio > 1,
            }
    return table
