"""``vmerge bench --gpu-check``: its smoke mode on CPU, the recipe it builds for CUDA, the
GPU peaks it knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergekit_vision.cli.main import main
from mergekit_vision.engine.step import PHASES
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.tools.gpu_check import bf16_peak_tflops, check_recipe

from ..conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_mode_reports_mfu_split_and_memory(tmp_path, capsys):
    out = tmp_path / "check.json"
    args = ["bench", "--gpu-check", "--smoke", str(TINY_RECIPE), "--steps", "1"]
    assert main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["smoke"] and result["precision"] == "fp32" and result["batch"] == 2
    assert result["peak_tflops"] > 0 and result["peak_source"].startswith("measured")
    student, full = result["student"], result["full_step"]
    assert student["resolution"] == 64 and student["attention"] == "sdpa"
    for part in (student, full):
        assert isinstance(part["mfu"], float) and part["mfu"] > 0
        assert part["step_s"] > 0 and part["model_tflop_per_step"] > 0
        assert part["peak_memory_mb"] > 0
    assert full["stage"] == "multitask_distillation"
    assert full["batch_sizes"] == {"clip": 2, "sam": 2}
    assert set(full["phase_s"]) == set(PHASES)
    assert full["phase_sum_s"] == pytest.approx(sum(full["phase_s"].values()))
    # the phases are laps of the step's own clock: together they are the step
    assert abs(full["phase_sum_s"] - full["step_s"]) <= 0.05 * full["step_s"] + 0.01
    assert full["compute_s"] == pytest.approx(full["step_s"] - full["phase_s"]["data"])
    assert full["teacher_tflop_per_step"] > 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and "backward" in printed and "peak memory" in printed


def test_the_cuda_check_runs_the_reference_recipe_at_full_size_from_random_weights():
    recipe = check_recipe(load_recipe(ROOT / "recipes" / "sam_clip.yaml"), smoke=False, batch=8)
    assert recipe.device == "cuda"
    assert recipe.teachers["sam"].params.pretrained is None
    assert recipe.teachers["clip"].params.pretrained is None
    assert recipe.tasks["sam"].resolution == 1024  # not the dry run's 256 px
    assert recipe.tasks["sam"].prompts.points_per_image == 16
    for task in recipe.tasks.values():
        assert task.data.type == "synthetic" and task.batch_size == 8 and task.num_workers == 0
    assert all(stage.steps == 1 for stage in recipe.stages)


def test_the_smoke_check_shrinks_the_recipe_as_a_dry_run_does():
    recipe = check_recipe(load_recipe(ROOT / "recipes" / "sam_clip.yaml"), smoke=True, batch=2)
    assert recipe.device == "cpu" and recipe.tasks["sam"].resolution == 256


def test_known_gpu_peaks_are_dense_bf16():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA H200 NVL") == 835.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert bf16_peak_tflops("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_the_check_says_to_use_smoke(capsys):
    assert main(["bench", "--gpu-check", str(TINY_RECIPE)]) == 2
    assert "--smoke" in capsys.readouterr().err
