"""The online-vs-cached throughput comparison runs both variants on the same stages."""

from __future__ import annotations

from mergekit_vision.cache.bench import bench_cached_targets

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
