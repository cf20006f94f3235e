"""The merged backbone as segment_anything's own ``Sam`` (Kirillov et al., arXiv 2304.02643).

The ``vitdet`` student is a segment_anything ``ImageEncoderViT`` and the SAM head holds SAM's prompt
encoder and mask decoder, so the export is a key rename: ``student.*`` -> ``image_encoder.*``,
``heads.<sam>.prompt_encoder.*`` -> ``prompt_encoder.*``, ``heads.<sam>.mask_decoder.*`` ->
``mask_decoder.*``. The position embedding is the student's, at its native size, which becomes the
``Sam``'s ``image_size``; ``SamPredictor`` and ``SamAutomaticMaskGenerator`` then run unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import Tensor

from mergekit_vision.export import ExportError
from mergekit_vision.export.loading import LoadedRun
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.sam.variants import (
    RELEASED_SIZES,
    SAM_PIXEL_MEAN_255,
    SAM_PIXEL_STD_255,
    SAM_VARIANTS,
)
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.teachers.sam import build_sam_model
from mergekit_vision.weights import load_strict, read_weights

SAM_WEIGHTS = "sam.pth"
SAM_CONFIG = "sam_config.json"


def sam_architecture(student: ViTDetStudent, head: SamHead) -> dict[str, Any]:
    """The keyword arguments of :func:`~mergekit_vision.teachers.sam.build_sam_model` (the same
    assembly as segment_anything's ``build_sam``) for this student and SAM head."""
    windows = [block.window_size for block in student.blocks if block.window_size > 0]
    layers = head.mask_decoder.transformer.layers
    return dict(
        encoder_embed_dim=student.embed_dim,
        encoder_depth=len(student.blocks),
        encoder_num_heads=student.blocks[0].attn.num_heads,
        encoder_global_attn_indexes=list(student.global_attn_indexes),
        image_size=student.native_size,
        patch_size=student.patch_size,
        window_size=windows[0] if windows else 14,
        prompt_embed_dim=head.prompt_encoder.embed_dim,
        decoder_depth=len(layers),
        decoder_mlp_dim=layers[0].mlp.lin1.out_features,
        decoder_num_heads=layers[0].self_attn.num_heads,
        mask_in_chans=head.prompt_encoder.mask_downscaling[3].out_channels,
    )


def registry_variant(architecture: dict[str, Any]) -> str | None:
    """The ``sam_model_registry`` key that builds exactly ``architecture``, if any (it builds
    only the released variants, at their shared sizes)."""
    for name, (dim, depth, heads, global_blocks) in SAM_VARIANTS.items():
        encoder = dict(
            encoder_embed_dim=dim,
            encoder_depth=depth,
            encoder_num_heads=heads,
            encoder_global_attn_indexes=list(global_blocks),
        )
        if architecture == {**encoder, **RELEASED_SIZES._asdict()}:
            return name
    return None


def sam_state_dict(run: LoadedRun) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The run's merged model as a ``Sam`` state dict, and the ``Sam``'s architecture."""
    student = run.model.student
    if not isinstance(student, ViTDetStudent):
        raise ExportError(
            f"--format sam needs the 'vitdet' student (SAM's ImageEncoderViT); this run's student "
            f"is {run.recipe.student.type!r} ({type(student).__name__}), which segment_anything's "
            "Sam cannot hold. Possible: --format safetensors (the whole merged model) or "
            "--format open_clip (the CLIP side)"
        )
    head = run.model.heads[run.head_name(SamHead)]
    assert isinstance(head, SamHead)
    state = {f"image_encoder.{k}": v for k, v in student.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v for k, v in head.prompt_encoder.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in head.mask_decoder.state_dict().items()})
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return state, sam_architecture(student, head)


def export_sam(run: LoadedRun, output: Path) -> list[Path]:
    """Write ``sam.pth`` (segment_anything's checkpoint layout) and ``sam_config.json``.

    The state dict is loaded strictly into a freshly built ``Sam`` before it is written, so a file
    that segment_anything would refuse is never produced.
    """
    state, architecture = sam_state_dict(run)
    build_sam_model(**architecture).load_state_dict(state, strict=True)
    output.mkdir(parents=True, exist_ok=True)
    weights = output / SAM_WEIGHTS
    torch.save(state, weights)
    config = {
        "registry": registry_variant(architecture),
        "build_sam_model": architecture,
        "pixel_mean": list(SAM_PIXEL_MEAN_255),
        "pixel_std": list(SAM_PIXEL_STD_255),
    }
    (output / SAM_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return [weights, output / SAM_CONFIG]


def load_exported_sam(folder: Path) -> Sam:
    """The exported ``Sam`` (eval mode): through ``sam_model_registry`` for a released variant,
    otherwise built from ``sam_config.json`` with segment_anything's own modules."""
    folder = Path(folder)
    config = json.loads((folder / SAM_CONFIG).read_text())
    if config["registry"] is not None:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[config["registry"]]()  # weights are read below, as any file
    else:
        sam = build_sam_model(**config["build_sam_model"])
    path = folder / SAM_WEIGHTS
    expected = f"the Sam state dict vmerge export --format sam writes beside {SAM_CONFIG}"
    remedy = "export the run again (vmerge export RUN --format sam)"
    state = read_weights(path, what="exported SAM weights", expected=expected, remedy=remedy)
    what = f"exported SAM weights {path} do not fit the Sam of {SAM_CONFIG}"
    load_strict(sam, state, what=what, path=path, expected=expected, remedy=remedy)
    return sam.eval()
