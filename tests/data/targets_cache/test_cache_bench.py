"""The online-vs-cached throughput comparison runs both variants on the same stages."""

from __future__ import annotations

from mergekit_vision.tools.cache_bench import bench_cached_targets

from .conftest import TINY_RECIPE


def test_bench_reports_both_variants_per_stage(tiny_checkpoints, tmp_path):
    overrides = [
        f"teachers.{name}.params.checkpoint={path}" for name, path in tiny_checkpoints.items()
    ]
    result = bench_cached_targets(
        TINY_RECIPE,
        task="clip",
        overrides=overrides,
        steps=2,
        warmup=0,
        cache_dir=tmp_path / "clip",
        progress=False,
    )
    assert result["cache"]["samples"] == 8 and not result["random_weights"]
    assert list(result["stages"]) == ["head_probing", "multitask_distillation"]
    for row in result["stages"].values():
        assert set(row["images_per_s"]) == {"online", "cached"}
        assert all(v > 0 for v in row["images_per_s"].values()) and row["speedup"] > 0
    assert (tmp_path / "clip" / "manifest.json").is_file()


def test_a_later_stage_trains_the_backbone_an_earlier_stage_froze(tiny_checkpoints, tmp_path):
    """Stages are timed one after the other on the same models: the multi-task stage must train
    the backbone although head probing, timed first, froze it."""
    import torch

    from mergekit_vision.engine.build import build_components
    from mergekit_vision.engine.loop import Engine
    from mergekit_vision.recipe.io import load_recipe
    from mergekit_vision.tools import cache_bench as bench

    overrides = [
        f"teachers.{name}.params.checkpoint={path}" for name, path in tiny_checkpoints.items()
    ]
    recipe = load_recipe(TINY_RECIPE, overrides)
    engine = Engine(build_components(recipe))
    probing, multitask = (s.model_copy(update={"tasks": ["clip"]}) for s in recipe.stages[:2])
    bench._stepper(engine, probing)(0)
    backbone = list(engine.c.model.student.parameters())
    assert not any(p.requires_grad for p in backbone)
    before = [p.detach().clone() for p in backbone]
    bench._stepper(engine, multitask)(0)
    assert any(not torch.equal(b, p) for b, p in zip(before, backbone, strict=True))
