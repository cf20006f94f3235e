"""C-RADIO through transformers (``RadioModel``) as the student backbone, at any input size.

AM-RADIO (Ranzinger et al., "AM-RADIO: Agglomerative Vision Foundation Model -- Reduce All
Domains Into One", CVPR 2024, arXiv 2312.06709) and its successors (RADIOv2.5, arXiv 2412.07679;
C-RADIO) distil several teachers into a plain ViT (Dosovitskiy et al., ICLR 2021, arXiv
2010.11929) with two additions this student keeps: a Cropped Position Embedding (CPE), one
position table for the largest input (``max_img_size``) resampled and cropped to each input's
token grid, so one model runs at any resolution; and several class tokens (one summary per
teacher) plus register tokens (Darcet et al., ICLR 2024, arXiv 2309.16588) before the patches.

The student *is* transformers' ``RadioModel``: its state dict has that layout (prefixed
``model.``), so a merged backbone loads back into ``RadioModel`` with a plain
``load_state_dict``. The architecture is data (``config``: ``RadioConfig`` keyword arguments,
transformers' defaults being C-RADIOv4-H's); the weights come from a local ``save_pretrained``
folder (``path``), a Hub repository holding one (``pretrained``), or are random (a merge from
scratch, as AM-RADIO trains). transformers' patch generator is RADIO's inference-time CPE; the
random crops RADIO also draws in training are not reproduced.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import RadioConfig, RadioModel

from mergekit_vision.contracts import STUDENTS, Student, StudentFeatures, Teacher, block_indices
from mergekit_vision.errors import WeightsFileError
from mergekit_vision.hub import (
    WeightsName,
    check_repo_id,
    resolve,
    snapshot_config_fields,
    snapshot_names,
)
from mergekit_vision.registry import PluginParams
from mergekit_vision.students.timm_vit import GridBlock, TokenStudentFeatures
from mergekit_vision.weights import check_loading_info

# RadioConfig fields a recipe may not set: derived from others, or the video path (which reads
# temporally packed frames, not the images a merge trains on).
_DERIVED = {"patch_dim", "video_patch_dim", "video_temporal_patch_size"}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(RadioConfig)} - _DERIVED


def radio_config(config: dict[str, Any]) -> RadioConfig:
    """``RadioConfig(**config)``; an unknown or derived key is a clear error, not ignored."""
    unknown = sorted(set(config) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            f"radio config: unknown or derived key(s) {unknown}; RadioConfig takes "
            f"{', '.join(sorted(_CONFIG_FIELDS))}"
        )
    return RadioConfig(**config)


def load_radio_folder(folder: Path, config: RadioConfig) -> RadioModel:
    """A ``RadioModel`` of architecture ``config`` with every weight from a ``save_pretrained``
    folder; a folder of another model, or weights that do not fit ``config``, are refused."""
    expected = "a transformers save_pretrained folder of a RadioModel (model_type 'radio')"
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise WeightsFileError(
            folder,
            problem=f"radio folder {folder}: cannot read its config.json ({error})",
            expected=expected,
            remedy="point path at the folder RadioModel.save_pretrained(...) wrote",
        ) from error
    if model_type != "radio":
        raise WeightsFileError(
            folder,
            problem=f"radio folder {folder} holds a {model_type!r} model",
            expected=expected,
            remedy="save the C-RADIO model with transformers' RadioModel.save_pretrained",
        )
    # from_pretrained fills absent or mis-shaped weights with random ones (asked to, so that the
    # error below can list them); a student that should start from C-RADIO must not
    model, info = RadioModel.from_pretrained(
        str(folder),
        config=config,
        local_files_only=True,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
    )
    check_loading_info(
        folder,
        info,
        what=f"radio folder {folder}: its weights do not fit the student's config",
        built_for="the recipe's config",
        expected=f"{expected} of the architecture student.params.config gives",
        remedy="copy the architecture keys of the folder's config.json (hidden_size, "
        "num_hidden_layers, num_attention_heads, mlp_ratio, num_cls_tokens, num_registers, "
        "max_img_size, patch_size, ...) into student.params.config",
    )
    return model


@STUDENTS.register("radio")
class RadioStudent(Student):
    """C-RADIO (transformers' RadioModel): a ViT with CPE, class and register tokens."""

    class Params(PluginParams):
        """``config`` holds ``RadioConfig`` keyword arguments, the architecture (``{}``:
        transformers' defaults, C-RADIOv4-H's); ``path`` is a ``save_pretrained`` folder of a
        ``RadioModel`` of that architecture, ``pretrained`` a Hub repository id holding one (at
        ``revision``), at most one of the two; neither: random weights. ``native_size``
        (default: the config's ``image_size``) is the side the model is mainly run at."""

        config: dict[str, Any] = Field(default_factory=dict)
        path: Path | None = None
        pretrained: str | None = None
        revision: str | None = None
        native_size: int | None = Field(None, ge=8)

        @model_validator(mode="after")
        def _check(self) -> RadioStudent.Params:
            config = radio_config(self.config)  # a typo or a wrong type fails here
            if config.hidden_size % config.num_attention_heads:
                raise ValueError("config: hidden_size must be a multiple of num_attention_heads")
            side = self.native_size or config.image_size
            if side % config.patch_size or side > config.max_img_size:
                raise ValueError(
                    f"native_size {side} must be a multiple of patch_size {config.patch_size} "
                    f"and at most max_img_size {config.max_img_size}"
                )
            if self.pretrained is not None:
                if self.path is not None:
                    raise ValueError(
                        "give path (a local folder) or pretrained (a repo id), not both"
                    )
                check_repo_id(self.pretrained)
            return self

    def __init__(self, *, model: RadioModel, native_size: int):
        """
        Args:
            model: transformers' ``RadioModel`` (images only: no video patch projection needed).
            native_size: the input side the model is mainly run at.
        """
        super().__init__()
        config = model.config
        self.model = model
        self.native_size = int(native_size)
        self.patch_size = int(config.patch_size)
        self.embed_dim = self.out_channels = int(config.hidden_size)
        self.num_prefix_tokens = int(config.num_cls_tokens + config.num_registers)
        self.summary_idxs = tuple(int(i) for i in config.summary_idxs)
        # the model normalizes itself (its input conditioner); these say with what
        self.pixel_mean = tuple(float(v) for v in config.norm_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in config.norm_std)  # type: ignore[assignment]
        # Recompute each block's activations in backward (set by the recipe's performance spec).
        self.activation_checkpointing = False

    @classmethod
    def build(cls, params: Params, *, teachers: dict[str, Teacher]) -> RadioStudent:
        config = radio_config(params.config)
        names = cls.weight_names(params)
        folder = resolve(names["pretrained"]) if names else params.path
        model = RadioModel(config) if folder is None else load_radio_folder(Path(folder), config)
        return cls(model=model, native_size=params.native_size or config.image_size)

    @classmethod
    def checkpoint_fields(cls, params: Params) -> dict[str, Path | None]:
        """Recipe fields that name the weights this student reads (a loaded run drops them:
        its weights are in the merged model)."""
        return snapshot_config_fields(cls.weight_names(params), "path", params.path)

    @classmethod
    def weight_names(cls, params: Params) -> dict[str, WeightsName]:
        return snapshot_names(params.pretrained, params.revision, "C-RADIO model")

    def forward(
        self,
        images: Tensor,
        *,
        return_intermediates: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> StudentFeatures:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], ``H`` and ``W`` multiples of ``patch_size``.
            return_intermediates: also return every block's output.
            blocks: the blocks whose outputs ``blocks`` returns (None: ``returned_blocks``).

        Returns:
            tokens ``[B, H/p, W/p, C]`` (the last block's patch tokens: C-RADIO has no final
            norm), feature_map ``[B, C, H/p, W/p]`` (the same tokens, NCHW), prefix_tokens
            ``[B, P, C]`` (class tokens, then registers), ``depth`` intermediates and the asked
            blocks' outputs ``[B, H/p, W/p, C]`` (patch tokens) by index.
        """
        height, width = self.image_sides(images)
        layers = self.transformer_blocks()
        kept = block_indices(
            self.returned_blocks if blocks is None else blocks,
            depth=len(layers),
            what="radio blocks",
        )
        grid = (height // self.patch_size, width // self.patch_size)
        x = self.model.embeddings(self.model.input_conditioner(images))  # [B, P + h*w, C]
        intermediates: list[Tensor] = []
        outputs: dict[int, Tensor] = {}
        for index, layer in enumerate(layers):
            x = self._run_block(layer, x)
            if return_intermediates:
                intermediates.append(self._patches(x, grid))
            if index in kept:
                outputs[index] = self._patches(x, grid)
        tokens = self._patches(x, grid)
        # Each output owns its storage: FSDP2 hooks a sharded module's outputs, and an in-place op
        # on an output that is a view would drop that hook (and the gradient all-gather) silently.
        return TokenStudentFeatures(
            tokens=tokens.clone(),
            feature_map=tokens.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format),
            image_size=int(height),
            intermediates=intermediates,
            blocks=outputs,
            prefix_tokens=x[:, : self.num_prefix_tokens].clone(),
        )

    def summary(self, prefix_tokens: Tensor) -> Tensor:
        """RadioModel's ``summary`` ``[B, S * C]``: its ``summary_idxs`` class tokens, flattened."""
        return prefix_tokens[:, list(self.summary_idxs)].flatten(1)

    def _patches(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """``[B, P + h*w, C]`` -> ``[B, h, w, C]``: the prefix tokens dropped."""
        return x[:, self.num_prefix_tokens :].reshape(x.shape[0], *grid, x.shape[-1])

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def last_block(self) -> nn.Module:
        return GridBlock(self.model.encoder.layer[-1])

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layer)
