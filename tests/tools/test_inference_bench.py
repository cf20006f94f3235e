"""``vmerge bench --inference``: the merged model vs the separate teachers where they are deployed.

The reference recipe at ``--size tiny`` runs every variant once; FLOPs are checked against counts
worked out by hand, int8 against fp32, and the ratios against the numbers they divide."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.errors import RecipeError
from mergekit_vision.tools.inference_bench import bench_inference, describe
from mergekit_vision.tools.inference_runners import VARIANTS
from mergekit_vision.tools.inference_systems import build_systems

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "recipes" / "sam_clip.yaml"

# The tiny open_clip tower (--size tiny): 32 px, patch 8, width 64, 2 layers, MLP 4x, 32-d output.
TOKENS, WIDTH, LAYERS, EMBED, CLASSES = (32 // 8) ** 2 + 1, 64, 2, 32, 1000
CLIP_TOWER_FLOPS = (
    2 * (TOKENS - 1) * (3 * 8 * 8) * WIDTH  # patch embedding (a convolution; no class token)
    + LAYERS
    * (
        2 * TOKENS * WIDTH * 3 * WIDTH  # q, k, v
        + 2 * 2 * TOKENS * TOKENS * WIDTH  # q k^T and attention v
        + 2 * TOKENS * WIDTH * WIDTH  # output projection
        + 2 * 2 * TOKENS * WIDTH * 4 * WIDTH  # MLP
    )
    + 2 * WIDTH * EMBED  # projection into the embedding space
)
ZERO_SHOT_FLOPS = 2 * EMBED * CLASSES  # [1, D] @ [D, K]


THROUGHPUT = 2  # the throughput batch: not the default 8, so the parameter reaches every part


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference")
    return bench_inference(
        REFERENCE, size="tiny", rounds=1, warmup=0, work_dir=folder, throughput_batch=THROUGHPUT
    )


def test_every_variant_of_both_systems_is_measured(bench):
    assert bench["variants"] == list(VARIANTS)
    for name in ("separate", "merged"):
        rows = bench["systems"][name]["variants"]
        assert list(rows) == list(VARIANTS)
        for variant, row in rows.items():
            if variant == "compile" and "error" in row:
                continue  # no working C++ compiler here: recorded, not raised
            assert "error" not in row, row
            assert row["latency_ms"] > 0 and row["images_per_s"] > 0
            assert set(row["peak_memory_mb"]) == {"1", str(THROUGHPUT)}
            assert all(peak > 0 for peak in row["peak_memory_mb"].values())


def test_ratios_are_merged_over_separate(bench):
    separate, merged = (bench["systems"][n] for n in ("separate", "merged"))
    ratios = bench["merged_vs_separate"]
    assert ratios["gflops"] == pytest.approx(
        merged["gflops"]["total"] / separate["gflops"]["total"]
    )
    for variant in ("eager", "ort", "ort_int8"):
        mine, theirs = merged["variants"][variant], separate["variants"][variant]
        assert ratios["latency"][variant] == pytest.approx(
            mine["latency_ms"] / theirs["latency_ms"]
        )
        batch = str(THROUGHPUT)
        assert ratios[f"peak_memory_batch_{batch}"][variant] == pytest.approx(
            mine["peak_memory_mb"][batch] / theirs["peak_memory_mb"][batch]
        )
    speedup = bench["int8_speedup"]["merged"]["vs_ort"]
    rows = merged["variants"]
    assert speedup == pytest.approx(rows["ort"]["latency_ms"] / rows["ort_int8"]["latency_ms"])


def test_onnx_graphs_match_pytorch_and_int8_stays_close(bench):
    for name in ("separate", "merged"):
        onnx = bench["systems"][name]["onnx"]
        for graph in onnx["max_abs_difference_from_pytorch"].values():
            assert max(graph.values()) < 1e-4
        int8 = onnx["int8"]
        for graph in ("encoder", "decoder"):
            assert int8[graph]["quantized_layers"] == int8[graph]["linear_layers"] > 0
            assert int8[graph]["int8_mb"] < int8[graph]["fp32_mb"]
        agreement = int8["agreement"]
        assert 0 < agreement["logits_relative_error"] < 0.05
        assert 0 < agreement["sam_embedding_relative_error"] < 0.05
        assert agreement["point_mask_iou"] > 0.9
    # the PyTorch emulation of the same model is as close to the int8 graph as rounding allows
    merged = bench["systems"]["merged"]["onnx"]["int8"]["agreement"]
    assert merged["emulation_relative_error"] < merged["logits_relative_error"] + 0.01


def test_flops_are_counted_as_by_hand():
    systems = build_systems(REFERENCE, size="tiny").systems
    separate, merged = describe(systems["separate"]), describe(systems["merged"])
    assert separate["gflops"]["clip_tower"] * 1e9 == pytest.approx(CLIP_TOWER_FLOPS, abs=0.5)
    assert separate["gflops"]["zero_shot"] * 1e9 == pytest.approx(ZERO_SHOT_FLOPS, abs=0.5)
    # the same ViT-Det and the same decoder on both sides
    assert merged["gflops"]["student"] == separate["gflops"]["sam_encoder"] > 0
    assert merged["gflops"]["sam_decoder"] == separate["gflops"]["sam_decoder"] > 0
    assert merged["params_m"]["student"] == pytest.approx(separate["params_m"]["sam_encoder"])
    # at tiny size merging costs more: the CLIP head's 3 global blocks over 64 tokens outweigh
    # the whole tiny CLIP tower (17 tokens)
    assert merged["gflops"]["clip_head"] > separate["gflops"]["clip_tower"]
    assert merged["gflops"]["total"] > separate["gflops"]["total"]


def test_a_head_without_blocks_makes_the_merged_model_cheaper():
    override = ["heads.clip_head.params.num_blocks=0"]
    systems = build_systems(REFERENCE, size="tiny", overrides=override).systems
    separate, merged = describe(systems["separate"]), describe(systems["merged"])
    assert merged["gflops"]["clip_head"] * 1e9 == pytest.approx(3 * 2 * EMBED * EMBED, abs=0.5)
    saved = separate["gflops"]["total"] - merged["gflops"]["total"]
    assert saved == pytest.approx(separate["gflops"]["clip_tower"] - merged["gflops"]["clip_head"])
    assert merged["gflops"]["total"] / separate["gflops"]["total"] < 1


def test_tiny_size_names_the_teachers_it_cannot_shrink():
    with pytest.raises(RecipeError, match=r"teachers\.dino: --size tiny has no tiny teacher"):
        build_systems(ROOT / "recipes" / "sam_clip_dinov2.yaml", size="tiny")


def test_the_command_writes_json(tmp_path, capsys):
    out = tmp_path / "inference.json"
    args = ["bench", "--inference", str(REFERENCE), "--size", "tiny", "--variants", "eager"]
    assert main([*args, "--steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["variants"] == ["eager"]
    assert result["systems"]["merged"]["variants"]["eager"]["latency_ms"] > 0
    assert "merged / separate" in capsys.readouterr().out


def test_unknown_variants_are_a_user_error(capsys):
    args = ["bench", "--inference", str(REFERENCE), "--variants", "eager,tensorrt"]
    assert main(args) == 2
    assert "a subset of eager,compile,ort,ort_int8" in capsys.readouterr().err


def test_a_child_process_s_runs_become_latency_and_throughput_by_hand():
    from mergekit_vision.tools.inference_runners import timing_fields

    found = {
        "peak_memory_mb": {"1": 10.0, "4": 30.0},
        "first_call_s": {"1": 9.0, "4": 12.0},
        "seconds": {"1": [0.3, 0.1, 0.2], "4": [2.0, 1.0, 4.0]},
    }
    row = timing_fields(found, 1, throughput_batch=4)
    assert row["latency_ms"] == pytest.approx(200.0)  # the median run, in ms
    assert row["images_per_s"] == pytest.approx(4 / 2.0)
    assert row["first_call_s_batch_1"] == 9.0 and row["first_call_s_batch_4"] == 12.0
    assert row["peak_memory_mb"] == {"1": 10.0, "4": 30.0} and "seconds" not in row
    # memory only (no timed runs): no timing fields are made up
    assert set(timing_fields({"peak_memory_mb": {"1": 1.0}, "seconds": {"1": []}}, 1, 4)) == {
        "peak_memory_mb"
    }


def test_onnxruntime_variants_are_timed_apart_even_without_memory(tmp_path):
    rows = bench_inference(
        REFERENCE, size="tiny", variants=("ort",), rounds=2, warmup=0, memory=False,
        work_dir=tmp_path, throughput_batch=THROUGHPUT,
    )["systems"]  # fmt: skip
    for name in ("separate", "merged"):
        row = rows[name]["variants"]["ort"]
        assert row["latency_ms"] > 0 and row["images_per_s"] > 0, row
        assert "peak_memory_mb" not in row and row["first_call_s_batch_1"] > 0
