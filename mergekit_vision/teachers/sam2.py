"""The SAM 2 teacher: transformers' ``Sam2Model`` from a local ``save_pretrained`` folder.

Ravi et al., "SAM 2: Segment Anything in Images and Videos", arXiv 2408.00714. On single images
SAM 2 is SAM's promptable segmenter (Kirillov et al., arXiv 2304.02643) with a hierarchical Hiera
image encoder whose feature pyramid hands the mask decoder two higher-resolution maps (strides 4
and 8) beside the stride-16 image embedding. The targets are the SAM teacher's: ``image_embeddings``
(that stride-16 map, with the no-memory embedding SAM 2 adds to every image without a video
memory) and ``mask_logits`` for point and box prompts, so a SAM task distils SAM 2 as it distils
SAM, and the promptable evaluation measures it through :meth:`Sam2Teacher.encode` and
:meth:`Sam2Teacher.mask_logits`.

The model is a local ``save_pretrained`` folder (``checkpoint``), or a Hub repository
(``pretrained``, at ``revision``) whose snapshot huggingface_hub keeps in its cache
(docs/weights.md); either is read with ``local_files_only=True``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import model_validator
from torch import Tensor, nn
from transformers import Sam2Config, Sam2Model

from mergekit_vision.contracts import TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.errors import WeightsFileError
from mergekit_vision.hub import (
    WeightsName,
    check_repo_id,
    resolve,
    snapshot_config_fields,
    snapshot_names,
)
from mergekit_vision.registry import PluginParams
from mergekit_vision.weights import check_loading_info

PROCESSOR_FILE = "preprocessor_config.json"
# SAM 2 normalises with ImageNet's statistics (its Sam2ImageProcessor and the official predictor).
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)
# Sam2Model reads the image part of a SAM 2 video checkpoint as well as an image-only one.
_MODEL_TYPES = ("sam2", "sam2_video")


class Sam2Params(PluginParams):
    """Where the SAM 2 model is, and which of its masks a prompt gives.

    ``checkpoint`` is a ``save_pretrained`` folder (``config.json``, weights, optionally
    ``preprocessor_config.json`` with ``image_mean``/``image_std``); ``pretrained`` a Hub
    repository id holding one, at ``revision`` (a branch, tag or commit; default main).
    ``config`` (``Sam2Config`` keyword arguments) gives the architecture of a random-weight build,
    for tests and dry runs only; without it a random build is transformers' default SAM 2.1
    Hiera-T architecture. ``multimask_output`` gives SAM 2's three ambiguity-aware masks per
    prompt; otherwise its single mask (which ``Sam2Model`` replaces by the best of the three when
    that mask is unstable, as SAM 2 does for clicks).
    """

    checkpoint: Path | None = None
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    multimask_output: bool = False

    @model_validator(mode="after")
    def _check(self) -> Sam2Params:
        # a revision alone is let through: dry runs and loaded runs drop an uncached 'pretrained'
        if self.pretrained is not None:
            if self.checkpoint is not None:
                raise ValueError(
                    "give checkpoint (a local save_pretrained folder) or pretrained (a Hub repo "
                    "id), not both"
                )
            check_repo_id(self.pretrained)
        return self


def load_sam2_folder(folder: Path) -> Sam2Model:
    """A ``Sam2Model`` from a ``save_pretrained`` folder, every weight from the folder's files."""
    config_file = folder / "config.json"
    expected = f"a transformers save_pretrained folder of a SAM 2 model (model_type {_MODEL_TYPES})"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise WeightsFileError(
            folder,
            problem=f"SAM 2 folder {folder}: cannot read its config.json ({error})",
            expected=expected,
            remedy="point checkpoint at the folder model.save_pretrained(...) wrote",
        ) from error
    if model_type not in _MODEL_TYPES:
        raise WeightsFileError(
            folder,
            problem=f"SAM 2 folder {folder} holds a {model_type!r} model",
            expected=expected,
            remedy="use the sam teacher for SAM 1, the hf teacher for other transformers models",
        )
    # from_pretrained fills absent or mis-shaped weights with random ones (asked to, so that the
    # error below can list them); a teacher must not start that way
    model, info = Sam2Model.from_pretrained(
        str(folder), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
    )
    check_loading_info(
        folder,
        info,
        what=f"SAM 2 folder {folder}: its weights do not fit its config.json",
        built_for="config.json",
        expected=expected,
        remedy="save the model again with save_pretrained, or restore its config.json",
    )
    return model


def _pixel_stats(folder: Path | None) -> tuple[Sequence[float], Sequence[float]]:
    file = None if folder is None else folder / PROCESSOR_FILE
    stats = json.loads(file.read_text()) if file is not None and file.is_file() else {}
    return stats.get("image_mean", SAM2_PIXEL_MEAN), stats.get("image_std", SAM2_PIXEL_STD)


def _check_sizes(model: Sam2Model) -> None:
    """The vision config's stride-16 map must be the prompt encoder's grid (a config mistake)."""
    grid = list(model.prompt_encoder.image_embedding_size)
    levels = [list(size) for size in model.config.vision_config.backbone_feature_sizes]
    if levels[-1] != grid or len(levels) != 3:
        side = model.prompt_encoder.input_image_size
        raise ValueError(
            f"SAM 2 config: vision_config.backbone_feature_sizes {levels} do not fit "
            f"prompt_encoder_config.image_size {side}; for that size they are "
            f"{[[side // s] * 2 for s in (4, 8, 16)]}"
        )


def random_config(config: dict[str, Any]) -> Sam2Config:
    """``Sam2Config(**config)``, or a ValueError that says which key is missing: transformers
    reads a nested config's class from its ``model_type`` and, without one, raises a bare
    ``KeyError('None')``."""
    try:
        return Sam2Config(**config)
    except KeyError as error:
        raise ValueError(
            f"sam2 'config' is not a Sam2Config ({type(error).__name__}: {error}); a nested "
            "config needs its model_type, e.g. vision_config.backbone_config.model_type: "
            "sam2_hiera_det_model (as in a SAM 2 config.json)"
        ) from None


@TEACHERS.register("sam2")
class Sam2Teacher(Teacher):
    """SAM 2 (Hiera, transformers' Sam2Model): image embeddings and prompted mask logits."""

    Params = Sam2Params

    def __init__(
        self,
        *,
        model: Sam2Model,
        mean: Sequence[float] = SAM2_PIXEL_MEAN,
        std: Sequence[float] = SAM2_PIXEL_STD,
        multimask_output: bool = False,
    ):
        """
        Args:
            model: transformers' SAM 2; images are resized to its prompt encoder's image size.
            mean, std: input normalization in [0, 1] units.
            multimask_output: produce SAM 2's 3 ambiguity-aware masks per prompt instead of one.
        """
        super().__init__()
        _check_sizes(model)
        self.model = model.eval()
        self.input_size = int(model.prompt_encoder.input_image_size)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.multimask_output = multimask_output

    @classmethod
    def build(cls, params: Sam2Params, *, allow_random_init: bool = False) -> Sam2Teacher:
        names = cls.weight_names(params)
        folder = resolve(names["pretrained"]) if names else params.checkpoint
        if folder is not None:
            model = load_sam2_folder(Path(folder))
        elif allow_random_init:
            model = Sam2Model(random_config(params.config or {}))
        else:
            raise ValueError(
                "sam2 teacher needs 'checkpoint', a local save_pretrained folder, or "
                "'pretrained', a Hub repo id; random weights (from 'config') are only for tests "
                "and dry runs (allow_random_init)"
            )
        mean, std = _pixel_stats(None if folder is None else Path(folder))
        teacher = cls(model=model, mean=mean, std=std, multimask_output=params.multimask_output)
        if folder is None:
            warnings.warn("SAM 2 teacher has random weights", stacklevel=2)
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: Sam2Params) -> dict[str, Path | None]:
        return snapshot_config_fields(cls.weight_names(params), "checkpoint", params.checkpoint)

    @classmethod
    def weight_names(cls, params: Sam2Params) -> dict[str, WeightsName]:
        return snapshot_names(params.pretrained, params.revision, "SAM 2 model")

    def target_specs(self) -> dict[str, TargetSpec]:
        height, width = self.model.prompt_encoder.image_embedding_size
        channels = self.model.config.prompt_encoder_config.hidden_size
        masks = self.model.mask_decoder.num_multimask_outputs if self.multimask_output else 1
        return {
            "image_embeddings": TargetSpec(
                ("B", channels, height, width), "stride-16 image embedding (FPN level 3)"
            ),
            "mask_logits": TargetSpec(
                ("B", "N", masks, 4 * height, 4 * width),
                "mask decoder logits per prompt (K = 3 with multimask_output, else 1)",
                needs_prompts=True,
            ),
        }

    def component_names(self) -> list[str]:
        return ["model", "vision_encoder", "prompt_encoder", "mask_decoder"]

    def component(self, name: str) -> nn.Module:
        if name == "model":
            return self.model
        if name in self.component_names():
            return getattr(self.model, name)
        return super().component(name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], resized to ``input_size`` here.
            targets: names from :meth:`target_specs`.
            prompts: needed for ``mask_logits``; pixels of ``images`` as given.

        Returns:
            ``image_embeddings`` ``[B, C, h, w]`` and/or ``mask_logits`` ``[B, N, K, 4h, 4w]``.
        """
        unknown = sorted(set(targets) - set(self.target_specs()))
        if unknown:
            raise ValueError(
                f"SAM 2 teacher has no target {unknown}; it has {list(self.target_specs())}"
            )
        if "mask_logits" in targets and prompts is None:
            raise ValueError("SAM 2 teacher target 'mask_logits' needs prompts (points or boxes)")
        encoded = self.encode(images)
        outputs = {"image_embeddings": encoded[-1]} if "image_embeddings" in targets else {}
        if "mask_logits" in targets:
            outputs["mask_logits"] = self.mask_logits(encoded, prompts)
        return outputs

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """``Sam2Model``'s image embeddings of ``images`` ``[B, 3, H, W]`` in [0, 1]: the
        high-resolution maps ``[B, C/8, 4h, 4w]`` and ``[B, C/4, 2h, 2w]`` (already projected
        for the decoder), then the image embedding ``[B, C, h, w]``."""
        return self.model.get_image_embeddings(self.prepare(images))

    @torch.no_grad()
    def mask_logits(
        self, encoded: list[Tensor], prompts: Prompts, *, multimask_output: bool | None = None
    ) -> Tensor:
        """Mask logits ``[B, N, K, 4h, 4w]`` for :meth:`encode`'s output: all point prompts, then
        all box prompts, each kind decoded as its own prompt set (``Sam2Model`` would otherwise
        pair the i-th points with the i-th box). ``multimask_output`` None: the teacher's own."""
        multimask = self.multimask_output if multimask_output is None else multimask_output
        prompts = self._in_model_frame(prompts, batch=int(encoded[-1].shape[0]))

        def decode(**prompt: Tensor) -> Tensor:
            return self.model(
                image_embeddings=encoded, multimask_output=multimask, **prompt
            ).pred_masks

        logits = []
        if prompts.points is not None:
            logits.append(decode(input_points=prompts.points, input_labels=prompts.point_labels))
        if prompts.boxes is not None:
            logits.append(decode(input_boxes=prompts.boxes))
        if not logits:
            k = self.model.mask_decoder.num_multimask_outputs if multimask else 1
            low_res = [4 * side for side in encoded[-1].shape[-2:]]
            return encoded[-1].new_zeros(encoded[-1].shape[0], 0, k, *low_res)
        return torch.cat(logits, dim=1)

    def _in_model_frame(self, prompts: Prompts, *, batch: int) -> Prompts:
        """Prompt pixels scaled to the resized input, as ``Sam2Processor`` scales them."""
        for name in ("points", "boxes"):
            tensor = getattr(prompts, name)
            if tensor is not None and tensor.shape[0] != batch:
                raise ValueError(
                    f"Prompts.{name} is for {tensor.shape[0]} images but there are {batch}"
                )
        if prompts.points is not None and prompts.point_labels is None:
            raise ValueError("Prompts.points is given without Prompts.point_labels")
        scale = self.input_size / prompts.image_size
        return Prompts(
            image_size=self.input_size,
            points=None if prompts.points is None else prompts.points.float() * scale,
            point_labels=prompts.point_labels,
            boxes=None if prompts.boxes is None else prompts.boxes.float() * scale,
        )
