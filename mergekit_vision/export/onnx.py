"""The merged model as ONNX graphs (https://onnx.ai), split as segment_anything's own ONNX export.

- ``image_encoder.onnx``: the merged student and the CLIP head (SAM-CLIP, Wang et al., arXiv
  2310.15308): ``images [B, 3, R, R]`` (RGB in [0, 1]; the graph normalizes) ->
  ``image_embedding [B, D]`` in the CLIP teacher's space, not L2-normalized, and, when ``R`` is the
  SAM side, ``sam_image_embeddings [B, C, R/p, R/p]``: the image embedding SAM's decoder reads.
  ``B`` is a dynamic axis.
- ``sam_image_encoder.onnx``: only when the CLIP side differs from the SAM side; the student at the
  SAM side -> ``sam_image_embeddings``.
- ``sam_decoder.onnx``: SAM's prompt encoder and mask decoder (Kirillov et al., arXiv 2304.02643)
  as segment_anything's ``SamOnnxModel`` wraps them, with its inputs and outputs (one image's
  embeddings, ``num_points`` a dynamic axis).
- ``onnx_config.json``: each graph's file, side, inputs and outputs, and the largest difference
  from the PyTorch model that onnxruntime measured on the export's check.

Exporter: the dynamo one (``torch.export``), for every graph. The legacy TorchScript exporter
(``dynamo=False``) traces the image encoder correctly but bakes ``SamOnnxModel``'s crop to the
image size (``int(prepadded_size[0])``) into a constant: its ``masks`` were 0.07-0.1 logits off
for any ``orig_im_size`` other than the example's. torch.export keeps that crop symbolic, but only
when tracing strictly (the non-strict mode cannot guard on the data-dependent size), so the
decoder is exported with ``strict=True``.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from torch import Tensor, nn

from mergekit_vision.export import ExportError
from mergekit_vision.export.loading import LoadedRun
from mergekit_vision.export.sam import sam_state_dict
from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.recipe.schema import task_of_head
from mergekit_vision.strategies.normalization.base import TargetNormalizer
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.students.vitdet_attention import ViTDetBlock
from mergekit_vision.teachers.sam import build_sam_model

IMAGE_ENCODER = "image_encoder.onnx"
SAM_IMAGE_ENCODER = "sam_image_encoder.onnx"
SAM_DECODER = "sam_decoder.onnx"
ONNX_CONFIG = "onnx_config.json"
OPSET = 18  # onnxruntime >= 1.17 runs it
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# Protobuf caps one file at 2 GiB; above this many weight bytes they go to `<graph>.onnx.data`.
MAX_INLINE_BYTES = 1_800_000_000
# The check after export fails above this difference, relative to the output's scale.
CHECK_TOLERANCE = 1e-3


class ImageEncoderGraph(nn.Module):
    """The merged student with the CLIP head's pooled embedding and/or the SAM image embedding."""

    def __init__(self, *, student: nn.Module, clip_head: ClipHead | None, sam_output: bool):
        """
        Args:
            student: the merged backbone: ``[B, 3, R, R]`` in [0, 1] -> student features.
            clip_head: the CLIP head (predicting in the teacher's space), or None.
            sam_output: also return the student's feature map (SAM's image embedding).
        """
        super().__init__()
        self.student, self.clip_head, self.sam_output = student, clip_head, sam_output

    def output_names(self) -> list[str]:
        return ["image_embedding"] * (self.clip_head is not None) + [
            "sam_image_embeddings"
        ] * self.sam_output

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``[B, 3, R, R]`` -> ``([B, D] image embedding, [B, C, R/p, R/p] SAM embedding)``,
        each when asked for."""
        features = self.student(images)
        outputs = []
        if self.clip_head is not None:
            (embedding,) = self.clip_head(features).values()
            outputs.append(embedding)
        if self.sam_output:
            outputs.append(features.feature_map)
        return tuple(outputs)


class MergedSamOnnxModel(SamOnnxModel):
    """segment_anything's ``SamOnnxModel`` with its mask choice made exportable and, for a SAM
    head distilled without multimask output, fixed to the single-mask token.

    ``SamOnnxModel`` picks the best of the three multimask tokens for one click; a head trained
    with ``multimask_output: false`` only distilled token 0, so it is always taken, as
    ``SamPredictor.predict(multimask_output=False)`` does.
    """

    def __init__(self, sam: Sam, *, single_mask_token: bool) -> None:
        super().__init__(sam, return_single_mask=True)
        self.single_mask_token = single_mask_token

    def select_masks(
        self, masks: Tensor, iou_preds: Tensor, num_points: Any
    ) -> tuple[Tensor, Tensor]:
        if self.single_mask_token:
            return masks[:, :1], iou_preds[:, :1]
        # The dynamo exporter cannot multiply a tensor by the symbolic point count: make it one.
        count = torch.scalar_tensor(num_points, device=masks.device)
        return super().select_masks(masks, iou_preds, count)


def export_onnx(run: LoadedRun, output: Path) -> list[Path]:
    """Write the image encoder graph(s), ``sam_decoder.onnx`` and ``onnx_config.json``.

    Each graph is run once by onnxruntime on an input of another batch (or point count) than the
    export's example and compared with the PyTorch model, so a graph that froze a dynamic size or
    mistranslated an op is never left behind.
    """
    _require_onnx()
    clip_name, sam_name = _optional_head(run, ClipHead), _optional_head(run, SamHead)
    if clip_name is None and sam_name is None:
        raise ExportError(
            f"{run.run_dir}: --format onnx needs a clip_head or a sam_head; heads: "
            f"{', '.join(run.model.heads)}. Possible: --format safetensors"
        )
    student = run.model.student
    if sam_name is not None and not isinstance(student, ViTDetStudent):
        raise ExportError(
            f"--format onnx exports the SAM head through segment_anything's Sam, which needs the "
            f"'vitdet' student; this run's student is {run.recipe.student.type!r}. Possible: "
            "--format safetensors, or a recipe without the sam_head for the CLIP graph"
        )
    output.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "pixel_mean": list(student.pixel_mean),
        "pixel_std": list(student.pixel_std),
    }
    written = []
    with _segment_anything_attention(run.model):
        for name, graph, side in _encoder_graphs(run, clip_name, sam_name):
            config[name.removesuffix(".onnx")] = _export_encoder(graph, side, output / name)
            written.append(output / name)
        if sam_name is not None:
            head = run.model.heads[sam_name]
            config["sam_decoder"] = _export_decoder(run, head, output / SAM_DECODER)
            written.append(output / SAM_DECODER)
    (output / ONNX_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return [*written, output / ONNX_CONFIG]


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f"--format onnx needs onnx, onnxruntime and onnxscript ({error}); install the extra: "
            "pip install 'mergekit-vision[onnx]'"
        ) from error


def _optional_head(run: LoadedRun, kind: type) -> str | None:
    """The run's head of ``kind``, or None when it has none (an error when it has several)."""
    if not any(isinstance(head, kind) for head in run.model.heads.values()):
        return None
    return run.head_name(kind)


def _encoder_graphs(
    run: LoadedRun, clip_name: str | None, sam_name: str | None
) -> list[tuple[str, ImageEncoderGraph, int]]:
    """``(file, graph, side)`` of each image encoder: one graph when the CLIP head's side (the
    eval resolution, else its task's largest, as ``--format open_clip``) is SAM's, else two."""
    student = run.model.student
    sam_side = student.native_size if sam_name is not None else None
    graphs = []
    clip_side = None
    if clip_name is not None:
        task = task_of_head(run.recipe.tasks, clip_name)
        clip_side = (
            run.recipe.eval.resolution
            if run.recipe.eval is not None
            else max(run.recipe.tasks[task].resolutions())
        )
        head = head_in_teacher_space(run.model.heads[clip_name], _normalizer(run, task))
        graph = ImageEncoderGraph(student=student, clip_head=head, sam_output=clip_side == sam_side)
        graphs.append((IMAGE_ENCODER, graph, clip_side))
    if sam_side is not None and sam_side != clip_side:
        name = SAM_IMAGE_ENCODER if graphs else IMAGE_ENCODER
        graphs.append(
            (name, ImageEncoderGraph(student=student, clip_head=None, sam_output=True), sam_side)
        )
    return graphs


def _normalizer(run: LoadedRun, task: str | None) -> TargetNormalizer | None:
    normalizers = run.model.normalizers
    return normalizers[task] if task in normalizers else None


def head_in_teacher_space(head: ClipHead, normalizer: TargetNormalizer | None) -> ClipHead:
    """``head``, or a copy whose last linear layer also undoes the task's target normalization
    (``fold_into``, exact): the normalizer's own inverse branches on its state, which a traced
    graph cannot."""
    if normalizer is None:
        return head
    folded = copy.deepcopy(head)
    folded.mlp[-1] = normalizer.fold_into(head.mlp[-1])
    return folded


@contextmanager
def _segment_anything_attention(model: nn.Module) -> Iterator[None]:
    """Run ViT-Det blocks through segment_anything's own ``Block.forward`` (same function and
    weights) while exporting: the default path attends in cache-sized blocks walked by Python
    loops over batch x heads (a CPU training kernel), which the TorchScript tracer mistranslates
    and torch.export freezes to the example's batch."""
    blocks = [module for module in model.modules() if isinstance(module, ViTDetBlock)]
    before = [block.attention for block in blocks]
    for block in blocks:
        block.attention = "original"
    try:
        yield
    finally:
        for block, attention in zip(blocks, before, strict=True):
            block.attention = attention


def _export_encoder(graph: ImageEncoderGraph, side: int, path: Path) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    device = next(graph.parameters()).device  # the recipe's; the graph itself has no device
    example = (torch.rand(2, 3, side, side, generator=generator).to(device),)
    check = (torch.rand(1, 3, side, side, generator=generator).to(device),)
    batch = torch.export.Dim("batch", min=1)
    outputs = graph.output_names()
    differences = export_graph(
        graph,
        example,
        path,
        input_names=["images"],
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        check=check,
        strict=False,
    )
    return {
        "file": path.name,
        "image_size": side,
        "inputs": ["images"],
        "outputs": outputs,
        "max_abs_difference": differences,
    }


def _export_decoder(run: LoadedRun, head: SamHead, path: Path) -> dict[str, Any]:
    state, architecture = sam_state_dict(run)
    sam = build_sam_model(**architecture)
    sam.load_state_dict(state, strict=True)
    model = MergedSamOnnxModel(sam.eval(), single_mask_token=not head.multimask_output).eval()
    differences = export_sam_decoder(model, path)
    grid = list(sam.prompt_encoder.image_embedding_size)
    return {
        "file": path.name,
        "image_size": architecture["image_size"],
        "embedding_size": grid,
        "mask_threshold": sam.mask_threshold,
        "single_mask_token": model.single_mask_token,
        "inputs": list(DECODER_INPUTS),
        "outputs": list(DECODER_OUTPUTS),
        "max_abs_difference": differences,
    }


def export_sam_decoder(model: SamOnnxModel, path: Path) -> dict[str, float]:
    """Export ``model`` (one image's decoder, ``num_points`` dynamic) to ``path``, checked with
    onnxruntime at another point count; each output's largest difference from PyTorch."""
    points = torch.export.Dim("num_points", min=1)
    return export_graph(
        model,
        decoder_inputs(model.model, points=5, seed=0),
        path,
        input_names=list(DECODER_INPUTS),
        output_names=list(DECODER_OUTPUTS),
        dynamic_shapes=(None, {1: points}, {1: points}, None, None, None),
        check=decoder_inputs(model.model, points=2, seed=1),
        strict=True,
    )


def decoder_inputs(sam: Sam, *, points: int, seed: int) -> tuple[Tensor, ...]:
    """Random inputs of ``sam_decoder.onnx`` for ``sam``, as segment_anything's export script
    makes them: one image's embeddings, ``points`` clicks (labels -1..3), a mask prompt."""
    generator = torch.Generator().manual_seed(seed)
    side = sam.image_encoder.img_size
    grid = sam.prompt_encoder.image_embedding_size
    return (
        torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=generator),
        torch.randint(0, side, (1, points, 2), generator=generator).float(),
        torch.randint(-1, 4, (1, points), generator=generator).float(),
        torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=generator),
        torch.tensor([1.0]),
        torch.tensor([1.5 * side, 2.25 * side]),
    )


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    check: tuple[Tensor, ...],
    strict: bool,
) -> dict[str, float]:
    """Export ``module`` traced on ``example`` to ``path`` with the dynamo exporter; run the file
    with onnxruntime on ``check`` and return each output's largest difference from ``module``."""
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=strict)
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    with warnings.catch_warnings():
        # Inputs sharing one dynamic axis (the decoder's points and labels) are each announced.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        torch.onnx.export(
            program,
            example,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,  # names the dynamic axes in the file
            opset_version=OPSET,
            external_data=weight_bytes > MAX_INLINE_BYTES,
            verbose=False,
        )
    try:
        return _check_with_onnxruntime(module, path, input_names, output_names, check)
    except ExportError:
        path.unlink()
        path.with_name(f"{path.name}.data").unlink(missing_ok=True)
        raise


def _check_with_onnxruntime(
    module: nn.Module, path: Path, input_names: list[str], output_names: list[str], inputs: tuple
) -> dict[str, float]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(
        output_names, {n: t.cpu().numpy() for n, t in zip(input_names, inputs, strict=True)}
    )
    with torch.no_grad():
        expected = module(*inputs)
    differences = {}
    for name, ours, reference in zip(output_names, got, expected, strict=True):
        reference = reference.cpu().numpy()
        if ours.shape != reference.shape:
            raise ExportError(
                f"{path}: onnxruntime's {name} has shape {ours.shape}, PyTorch's "
                f"{reference.shape}; the export froze a size it should not have"
            )
        differences[name] = float(np.abs(ours - reference).max(initial=0.0))
        scale = 1.0 + float(np.abs(reference).max(initial=0.0))
        if differences[name] > CHECK_TOLERANCE * scale:
            raise ExportError(
                f"{path}: onnxruntime's {name} differs from PyTorch's by {differences[name]:.3g}; "
                "the graph is not the model (please report it with the run's recipe)"
            )
    return differences
