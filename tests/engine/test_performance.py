"""The recipe's speed switches: applied to the built model, refused where they cannot hold."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mergekit_vision.cli.main import main
from mergekit_vision.engine.optim import build_optimizer, fused_adamw_available
from mergekit_vision.engine.performance import apply_performance, autocast_context, autocast_dtype
from mergekit_vision.recipe.schema import OptimizerSpec, PerformanceSpec, StageSpec
from mergekit_vision.students.vitdet import ViTDetStudent

STAGE = StageSpec(name="s", steps=1, tasks=["t"], train=["backbone"], lr=1e-3)


class _Model(nn.Module):
    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student


def _tiny_model() -> _Model:
    return _Model(
        ViTDetStudent(
            embed_dim=16,
            depth=2,
            num_heads=2,
            global_attn_indexes=(1,),
            patch_size=8,
            window_size=2,
            out_chans=8,
            native_size=32,
        )
    )


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [
        ("cpu", "auto", None),
        ("cuda", "auto", torch.bfloat16),
        ("cpu", "bf16", torch.bfloat16),
        ("cuda", "fp32", None),
    ],
)
def test_autocast_is_bf16_on_gpu_and_fp32_on_cpu_by_default(device, precision, expected):
    assert autocast_dtype(device, precision) is expected


def test_autocast_context_casts_matmuls_only_when_asked():
    a = torch.randn(4, 4)
    with autocast_context("cpu", None):
        assert (a @ a).dtype == torch.float32
    with autocast_context("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_switches_reach_the_student():
    model = _tiny_model()
    spec = PerformanceSpec(activation_checkpointing=True, compile=True)
    apply_performance(model, spec, device=torch.device("cpu"))
    assert model.student.activation_checkpointing
    assert model.student._compiled_call_impl is not None  # compiled lazily, on first call
    assert model.autocast_dtype is None
    assert list(dict(model.named_parameters())) == list(dict(_tiny_model().named_parameters()))


def test_checkpointing_refused_for_a_student_without_it():
    with pytest.raises(ValueError, match="no per-block checkpointing"):
        apply_performance(
            _Model(nn.Linear(2, 2)),
            PerformanceSpec(activation_checkpointing=True),
            device=torch.device("cpu"),
        )


def test_fused_adamw_where_the_device_has_it():
    params = list(nn.Linear(4, 4).parameters())
    auto = build_optimizer({"backbone": params}, stage=STAGE, spec=OptimizerSpec())
    assert auto.defaults["fused"] is fused_adamw_available(params)
    off = build_optimizer({"backbone": params}, stage=STAGE, spec=OptimizerSpec(fused=False))
    assert not off.defaults["fused"]


def test_fused_adamw_refused_for_parameters_without_a_kernel(monkeypatch):
    import torch.utils._foreach_utils as foreach_utils

    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    params = list(nn.Linear(4, 4).parameters())
    with pytest.raises(ValueError, match="no fused AdamW kernel"):
        build_optimizer({"backbone": params}, stage=STAGE, spec=OptimizerSpec(fused=True))


def test_run_with_checkpointing_trains_the_backbone(tiny_recipe_args, tmp_path):
    out = tmp_path / "run"
    argv = ["run", *tiny_recipe_args, "--output", str(out), "--max-steps", "2"]
    argv += ["--set", "performance.activation_checkpointing=true", "--set", "stages.0.steps=1"]
    assert main(argv) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[1]["stage"] == "multitask_distillation"  # the backbone trains, checkpointed


def _mmapped_bytes() -> int | None:
    """glibc's count of bytes in mmapped blocks (``mallinfo2().hblkhd``), or None off glibc."""
    import ctypes

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None

    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]

    mallinfo2.restype = MallInfo2
    return int(mallinfo2().hblkhd)


def test_kept_freed_memory_serves_large_tensors_from_the_heap():
    """After keep_freed_memory, a 64 MB tensor is no fresh mmap (whose pages would fault in anew
    at every step) but heap memory that stays mapped for the next one."""
    from mergekit_vision.engine.performance import keep_freed_memory

    if _mmapped_bytes() is None or not keep_freed_memory():
        pytest.skip("needs glibc")
    before = _mmapped_bytes()
    tensor = torch.empty(16 << 20)  # 64 MB of fp32, over glibc's default 32 MB mmap ceiling
    assert _mmapped_bytes() == before
    del tensor


def test_recipe_keeps_freed_memory_by_default():
    assert PerformanceSpec().keep_freed_memory is True


_SUBNORMALS_LEFT = """
import sys, torch
if sys.argv[1] == "cli":
    from mergekit_vision.cli.main import main
    main(["plugins"])
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-20)  # x * x = 1e-40 is below float32's normal range
print(int(torch.count_nonzero(x * x)))
"""


def test_the_cli_flushes_subnormal_floats_in_all_threads():
    """``vmerge`` computes subnormal floats as zero (x86 handles them many times slower), and
    threads started afterwards inherit that; without the CLI they stay."""
    import subprocess
    import sys

    def nonzero(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _SUBNORMALS_LEFT, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.split()[-1])

    if nonzero("plain") == 0:
        pytest.skip("this CPU already flushes subnormal floats")
    assert nonzero("cli") == 0
