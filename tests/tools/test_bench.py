"""``vmerge bench``: training throughput and MFU, SDPA vs original attention side by side."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.cli.main import main
from mergekit_vision.tools.bench import PHASES, bench_student, bench_training

from ..conftest import TINY_RECIPE

TINY_STUDENT = dict(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), patch_size=8, window_size=3
)


def test_student_bench_counts_segment_anything_flops_for_both_attentions():
    result = bench_student(
        variant="custom",
        architecture=TINY_STUDENT,
        resolution=64,
        batch=2,
        steps=2,
        warmup=0,
        peak_size=64,
    )
    assert set(result["mfu"]) == {"sdpa", "original"}
    assert result["model_gflops"] == pytest.approx(result["executed_gflops"]["original"])
    # the 8x8 grid pads to 9x9 windows: segment_anything projects the padding, SDPA does not
    assert result["executed_gflops"]["sdpa"] < result["model_gflops"]
    for name in ("sdpa", "original"):
        assert result["mfu"][name] > 0 and result["median_step_s"][name] > 0
    assert result["speedup_vs_original"]["original"] == pytest.approx(1.0)


def test_student_bench_times_the_compiled_student_beside_the_eager_one():
    result = bench_student(
        variant="custom",
        architecture=TINY_STUDENT,
        resolution=32,
        batch=1,
        steps=1,
        warmup=0,
        peak_size=64,
        attentions=("sdpa+compile", "sdpa"),
    )
    assert set(result["mfu"]) == {"sdpa+compile", "sdpa"}
    assert result["executed_gflops"]["sdpa+compile"] == result["executed_gflops"]["sdpa"]
    assert result["median_step_s"]["sdpa+compile"] > 0


def test_training_bench_splits_the_step_per_phase(tiny_checkpoints):
    overrides = [f"teachers.{n}.params.checkpoint={p}" for n, p in tiny_checkpoints.items()]
    result = bench_training(TINY_RECIPE, overrides=overrides, steps=2, warmup=0, peak_size=64)
    assert result["stage"] == "multitask_distillation" and not result["random_weights"]
    assert result["model_gflops_per_step"] > 0 and result["teacher_gflops_per_step"] > 0
    assert result["peak_memory_mb"] > 0
    for row in result["attention"].values():
        assert set(row["phase_s"]) == set(PHASES)
        assert row["median_step_s"] == pytest.approx(sum(row["phase_s"].values()), rel=0.5)
        assert set(row["images_per_s"]) == {"clip", "sam"}
        assert row["images_per_s"]["clip"] == pytest.approx(2 * row["images_per_s"]["sam"])
        assert row["mfu"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench"], "give a RECIPE"),
        (["bench", "--student", "vit_q"], "choose one of vit_b"),
        (["bench", str(TINY_RECIPE), "--student", "vit_b"], "not both"),
    ],
)
def test_cli_refuses_unclear_requests(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_flop_count_includes_the_in_place_products_of_blockwise_attention():
    """The blockwise CPU attention accumulates with ``baddbmm_``; executed FLOPs must count it:
    forward ``q k^T`` and ``P v``, backward its recomputed ``q k^T`` and four gradient products."""
    from mergekit_vision.students.rel_pos_attention import rel_pos_attention
    from mergekit_vision.tools.bench import count_flops

    q = torch.randn(2, 12, 8, requires_grad=True)
    k, v = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    rel_h, rel_w = torch.randn(2, 12, 3), torch.randn(2, 12, 4)

    def step():
        rel_pos_attention(q, k, v, rel_h, rel_w, scale=1.0, block_elements=50).sum().backward()

    product = 2 * 2 * 12 * 12 * 8
    assert count_flops(step) == 7 * product
