"""Dynamic int8 quantization of the linear layers, as onnxruntime runs it and PyTorch emulates it.

Why ONNX Runtime's ``quantize_dynamic``: torch.ao's dynamic quantization is deprecated in the
torch vmerge runs on, and torchao (its successor) is not a dependency; onnxruntime already is
(the ``onnx`` extra), and its int8 kernels are what a CPU deployment of the exported graphs runs.

What is quantized: every node that torch's linear op (``nn.Linear``, ``F.linear``) became in the
graph, found by the exporter's record of the FX node each ONNX node came from. Such a layer is a
``MatMul`` or, for 2-D inputs, a ``Gemm``; ``quantize_dynamic`` only quantizes ``MatMul``, so
each linear ``Gemm`` is first rewritten as ``MatMul`` + ``Add`` (the same function). Attention
products, convolutions (patch embedding, SAM's neck), a bare ``x @ proj`` and the zero-shot
product stay fp32. Weights are int8, symmetric, one scale per output channel; activations are
uint8 with a scale and zero point computed per tensor at run time (``DynamicQuantizeLinear``).

:func:`emulate_int8` computes the same numbers in PyTorch (each ``nn.Linear``'s weight and input
quantized and dequantized as above), so the eval metrics can be measured on the int8 model through
the ordinary evaluation. It measures the accuracy effect of the quantization, not its speed; a
test checks that it reproduces onnxruntime's int8 outputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mergekit_vision.export.onnx import MAX_INLINE_BYTES

# The exporter's record of the FX node an ONNX node came from (``torch.onnx``, dynamo exporter).
FX_NODE = "pkg.torch.onnx.fx_node"
LINEAR_OP = "aten.linear"
WEIGHT_LEVELS = 127  # symmetric int8 weights use [-127, 127] (onnxruntime's symmetric range)
ACTIVATION_LEVELS = 255  # uint8 activations


def linear_nodes(model: Any) -> list[Any]:
    """The ``MatMul`` / ``Gemm`` nodes of an ONNX ``model`` that torch's linear op became, with a
    constant weight."""
    constants = {init.name for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        origin = next((p.value for p in node.metadata_props if p.key == FX_NODE), "")
        if (
            node.op_type in ("MatMul", "Gemm")
            and LINEAR_OP in origin
            and node.input[1] in constants
        ):
            found.append(node)
    return found


def gemm_to_matmul(model: Any) -> int:
    """Rewrite each linear ``Gemm`` (``alpha = beta = 1``, ``transA = 0``) of ``model`` in place
    as ``MatMul`` with its (transposed) weight, plus ``Add`` of its bias; returns how many."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    for node in linear_nodes(model):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attributes.get("transA", 0) != 0:
            continue
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attributes.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_as_matmul"
        model.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(weight), weight_name)
        )
        output = node.output[0]
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{output}_matmul" if has_bias else output
        matmul = helper.make_node("MatMul", [node.input[0], weight_name], [product], node.name)
        matmul.metadata_props.extend(node.metadata_props)
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, matmul)
        if has_bias:
            add = helper.make_node("Add", [product, node.input[2]], [output], f"{node.name}_bias")
            model.graph.node.insert(index + 1, add)
        rewritten += 1
    return rewritten


def quantize_linear_layers(fp32: Path, int8: Path) -> dict[str, Any]:
    """Write ``int8``: ``fp32`` with its linear layers dynamically quantized (module docstring).
    Returns the count of quantized layers and both files' sizes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    gemm_to_matmul(model)
    names = [node.name for node in linear_nodes(model)]
    staged = int8.with_name(f"{int8.stem}.staged.onnx")
    large = model.ByteSize() > MAX_INLINE_BYTES  # protobuf's 2 GiB cap on one file
    onnx.save(model, str(staged), save_as_external_data=large)
    with _quiet_preprocessing_advice():
        quantize_dynamic(
            staged,
            int8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=names,
            use_external_data_format=large,
        )
    staged.unlink()
    staged.with_name(f"{staged.name}.data").unlink(missing_ok=True)
    quantized = onnx.load(str(int8), load_external_data=False)
    integer = sum(node.op_type == "MatMulInteger" for node in quantized.graph.node)
    return {
        "linear_layers": len(names),
        "quantized_layers": integer,
        "fp32_mb": file_mb(fp32),
        "int8_mb": file_mb(int8),
    }


def file_mb(path: Path) -> float:
    """Size of an ONNX file with its external weights (``<file>.data``) if any, in MB."""
    data = path.with_name(f"{path.name}.data")
    return (path.stat().st_size + (data.stat().st_size if data.is_file() else 0)) / 2**20


@contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    """quantize_dynamic logs advice to run onnxruntime's shape pre-processing on the root logger;
    these graphs come with shapes from the exporter."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class Int8EmulatedLinear(nn.Linear):
    """``nn.Linear`` computing what onnxruntime's dynamically quantized ``MatMul`` computes: the
    weight as int8 (symmetric, per output channel) and the input as uint8 (per tensor, scale and
    zero point from its range at run time), both dequantized before the product."""

    @classmethod
    def of(cls, linear: nn.Linear) -> Int8EmulatedLinear:
        emulated = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        emulated.to(linear.weight.device)
        with torch.no_grad():
            emulated.weight.copy_(quantize_weight(linear.weight))
            if linear.bias is not None:
                emulated.bias.copy_(linear.bias)
        emulated.requires_grad_(False)
        return emulated

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(quantize_activation(x), self.weight, self.bias)


def quantize_weight(weight: Tensor) -> Tensor:
    """``[out, in]`` -> the same, rounded to int8 levels of one scale per output channel."""
    scale = weight.abs().amax(dim=1, keepdim=True) / WEIGHT_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale).clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) * scale


def quantize_activation(x: Tensor) -> Tensor:
    """ONNX's ``DynamicQuantizeLinear`` then dequantization: uint8 over ``[min(x, 0),
    max(x, 0)]``, zero point rounded half to even."""
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (high - low) / ACTIVATION_LEVELS
    if scale == 0:
        return x
    zero_point = torch.round(-low / scale).clamp(0, ACTIVATION_LEVELS)
    levels = (torch.round(x / scale) + zero_point).clamp(0, ACTIVATION_LEVELS)
    return (levels - zero_point) * scale


def emulate_int8(model: nn.Module, *, in_place: bool = False) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced by :class:`Int8EmulatedLinear`.

    ``nn.MultiheadAttention`` reads its projections' weights without calling them, so a model
    holding one is refused rather than half emulated."""
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise ValueError(
            "emulate_int8: the model has an nn.MultiheadAttention, whose projections run "
            "outside their modules' forward; its int8 numbers would not be emulated"
        )
    model = model if in_place else copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, Int8EmulatedLinear):
                setattr(parent, name, Int8EmulatedLinear.of(child))
    return model


def relative_error(ours: np.ndarray | Tensor, reference: np.ndarray | Tensor) -> float:
    """``||ours - reference|| / ||reference||`` (0 when both are zero)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(ours - reference)) / norm if norm else 0.0
