"""int8 linear layers: onnxruntime's dynamic quantization and the PyTorch emulation of it agree."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from mergekit_vision.tools.quantization import (
    emulate_int8,
    quantize_activation,
    quantize_linear_layers,
    quantize_weight,
    relative_error,
)


def _export(module: nn.Module, example: torch.Tensor, path) -> None:
    torch.onnx.export(module, (example,), str(path), input_names=["x"], dynamo=True, verbose=False)


@pytest.mark.parametrize("shape", [(6, 64), (2, 9, 64)], ids=["2-D (Gemm)", "3-D (MatMul)"])
def test_emulation_is_what_onnxruntime_computes(tmp_path, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40)).eval()
    x = torch.randn(*shape) * 3 + 0.5  # a range not centred on zero: a non-trivial zero point
    _export(model, x, tmp_path / "fp32.onnx")
    found = quantize_linear_layers(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    assert found["linear_layers"] == found["quantized_layers"] == 2
    session = onnxruntime.InferenceSession(str(tmp_path / "int8.onnx"))
    (theirs,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        fp32, ours = model(x).numpy(), emulate_int8(model)(x).numpy()
    quantization_error = relative_error(theirs, fp32)
    assert 1e-3 < quantization_error < 0.05
    assert relative_error(ours, theirs) < 1e-3 * quantization_error


def test_weights_keep_one_scale_per_output_channel():
    weight = torch.tensor([[1.0, -0.5, 0.25], [100.0, 3.0, -50.0]])
    quantized = quantize_weight(weight)
    assert quantized[0, 0] == pytest.approx(1.0) and quantized[1, 0] == pytest.approx(100.0)
    # row 0's small values survive: its scale is 1/127, not 100/127
    assert quantized[0, 2] == pytest.approx(round(0.25 * 127) / 127)


def test_activations_use_256_levels_including_zero():
    x = torch.tensor([-1.0, 0.0, 0.3, 2.0])
    levels = quantize_activation(x) / (3.0 / 255)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert quantize_activation(x)[1] == 0
    assert quantize_activation(torch.zeros(3)).abs().sum() == 0


def test_the_original_model_is_left_fp32():
    model = nn.Sequential(nn.Linear(4, 4))
    emulated = emulate_int8(model)
    assert type(model[0]) is nn.Linear and type(emulated[0]) is not nn.Linear
    assert not np.array_equal(model[0].weight.detach(), emulated[0].weight.detach())


def test_multihead_attention_is_refused():
    with pytest.raises(ValueError, match="MultiheadAttention"):
        emulate_int8(nn.MultiheadAttention(8, 2))
