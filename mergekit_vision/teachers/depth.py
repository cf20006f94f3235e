"""The depth teacher: a transformers depth estimator (Depth Anything, DPT) from a local folder.

Depth Anything (Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled
Data", CVPR 2024, arXiv 2401.10891; V2, arXiv 2406.09414) is a DINOv2 encoder with a DPT decoder
(Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021, arXiv 2103.13413) trained,
as MiDaS was (Ranftl et al., TPAMI 2022, arXiv 1907.01341), to predict *relative inverse
depth*: a disparity map correct up to an unknown scale and shift per image. transformers'
``DepthAnythingForDepthEstimation`` (and any model ``AutoModelForDepthEstimation`` builds: DPT,
GLPN, ...) gives it as ``predicted_depth``; the teacher's one target ``depth`` is that map,
``[B, 1, H, W]``, which a ``depth_head`` learns with the scale-and-shift-invariant ``ssi`` loss.

Metric-depth variants (Depth Anything's ``depth_estimation_type: metric``, ZoeDepth) predict depth
in metres instead; :attr:`DepthTeacher.depth_space` says which of the two the map holds, so the
evaluation compares it with ground truth in the right space.

The model is a local ``save_pretrained`` folder (``checkpoint``), or a Hub repository
(``pretrained``, at ``revision``) whose snapshot huggingface_hub keeps in its cache
(docs/weights.md); either is read with ``local_files_only=True``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForDepthEstimation

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
DepthSpace = Literal["disparity", "depth"]


class DepthParams(PluginParams):
    """Where the depth model is, how images reach it, and what its map holds.

    ``checkpoint`` is a ``save_pretrained`` folder (``config.json``, weights and
    ``preprocessor_config.json`` with ``image_mean``/``image_std`` and ``size``); ``pretrained``
    a Hub repository id holding one ("depth-anything/Depth-Anything-V2-Small-hf"), at
    ``revision``. ``config`` (a transformers config dict with ``model_type``) gives the
    architecture of a random-weight build, for tests and dry runs only; without it a random
    build is transformers' default Depth Anything (a ViT-S/14 DINOv2 at 518 px). ``image_size``
    (default: the processor's ``size``, else the config's) is the side images are resized to;
    ``output_size`` the side the map is resized to (default: the model's own output, e.g. 518
    for Depth Anything). ``prediction`` says what the map holds (default: ``depth`` for a
    config with ``depth_estimation_type: metric``, otherwise ``disparity``, relative inverse
    depth).
    """

    checkpoint: Path | None = None
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    image_size: int | None = Field(None, ge=8)
    output_size: int | None = Field(None, ge=1)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    prediction: DepthSpace | None = None

    @model_validator(mode="after")
    def _check(self) -> DepthParams:
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a 'model_type' (e.g. 'depth_anything', 'dpt')")
        # a revision alone is let through: dry runs and loaded runs drop an uncached 'pretrained'
        if self.pretrained is not None:
            if self.checkpoint is not None:
                raise ValueError(
                    "give checkpoint (a local save_pretrained folder) or pretrained (a Hub repo "
                    "id), not both"
                )
            check_repo_id(self.pretrained)
        return self


def load_depth_folder(folder: Path) -> nn.Module:
    """A depth estimator from a ``save_pretrained`` folder, every weight from the folder's files."""
    expected = "a transformers save_pretrained folder of a depth-estimation model"
    if not (folder / "config.json").is_file():
        raise WeightsFileError(
            folder,
            problem=f"depth folder {folder} has no config.json",
            expected=expected,
            remedy="point checkpoint at the folder model.save_pretrained(...) wrote",
        )
    try:
        # from_pretrained fills absent or mis-shaped weights with random ones (asked to, so that
        # the error below can list them); a teacher must not start that way
        model, info = AutoModelForDepthEstimation.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )  # fmt: skip
    except ValueError as error:  # a config of a model that estimates no depth
        raise WeightsFileError(
            folder,
            problem=f"depth folder {folder}: {str(error).splitlines()[0]}",
            expected=expected + " (Depth Anything, DPT, ...)",
            remedy="use the hf teacher for other transformers models",
        ) from error
    check_loading_info(
        folder,
        info,
        what=f"depth folder {folder}: its weights do not fit its config.json",
        built_for="config.json",
        expected=expected,
        remedy="save the model again with save_pretrained, or restore its config.json",
    )
    return model


def _native_size(config: Any) -> int:
    """The side the model was configured for: its own ``image_size``, else its backbone's."""
    for source in (config, getattr(config, "backbone_config", None)):
        size = getattr(source, "image_size", None)
        if size is not None:
            return int(size[0] if isinstance(size, list | tuple) else size)
    raise ValueError("depth teacher: the config names no image_size; give 'image_size'")


def _processor(folder: Path | None) -> dict[str, Any]:
    file = None if folder is None else folder / PROCESSOR_FILE
    return json.loads(file.read_text()) if file is not None and file.is_file() else {}


@TEACHERS.register("depth")
class DepthTeacher(Teacher):
    """A transformers depth estimator (Depth Anything, DPT): a relative depth map per image."""

    Params = DepthParams

    def __init__(
        self,
        *,
        model: nn.Module,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        output_size: int | None = None,
        depth_space: DepthSpace = "disparity",
    ):
        """
        Args:
            model: a transformers depth estimator whose output has ``predicted_depth``
                ``[B, H', W']``.
            input_size: the side images are resized to.
            mean, std: input normalization in [0, 1] units.
            output_size: the side the map is resized to; None keeps the model's ``H', W'``.
            depth_space: what the map holds: ``disparity`` (relative inverse depth) or ``depth``.
        """
        super().__init__()
        self.model = model.eval()
        self.input_size = int(input_size)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.depth_space = depth_space
        if output_size is None:  # probed once: DPT-style decoders differ in their output stride
            with torch.no_grad():
                probe = torch.zeros(1, 3, self.input_size, self.input_size)
                output_size = int(self.model(pixel_values=probe).predicted_depth.shape[-1])
        self.output_size = int(output_size)

    @classmethod
    def build(cls, params: DepthParams, *, allow_random_init: bool = False) -> DepthTeacher:
        names = cls.weight_names(params)
        folder = resolve(names["pretrained"]) if names else params.checkpoint
        if folder is not None:
            folder = Path(folder)
            model = load_depth_folder(folder)
        elif allow_random_init:
            config = dict(params.config or {"model_type": "depth_anything"})
            built = AutoConfig.for_model(config.pop("model_type"), **config)
            model = AutoModelForDepthEstimation.from_config(built)
            warnings.warn("depth teacher has random weights", stacklevel=2)
        else:
            raise ValueError(
                "depth teacher needs 'checkpoint', a local save_pretrained folder, or "
                "'pretrained', a Hub repo id; random weights (from 'config') are only for tests "
                "and dry runs (allow_random_init)"
            )
        stats = _processor(folder)
        mean = params.mean or stats.get("image_mean")
        std = params.std or stats.get("image_std")
        if mean is None or std is None:
            if not allow_random_init:
                raise ValueError(
                    f"depth teacher: no image mean/std: give 'mean' and 'std' or a "
                    f"{PROCESSOR_FILE} with image_mean and image_std"
                )
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        size = params.image_size or stats.get("size", {}).get("height")
        metric = getattr(model.config, "depth_estimation_type", None) == "metric"
        teacher = cls(
            model=model,
            input_size=int(size or _native_size(model.config)),
            mean=mean,
            std=std,
            output_size=params.output_size,
            depth_space=params.prediction or ("depth" if metric else "disparity"),
        )
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: DepthParams) -> dict[str, Path | None]:
        return snapshot_config_fields(cls.weight_names(params), "checkpoint", params.checkpoint)

    @classmethod
    def weight_names(cls, params: DepthParams) -> dict[str, WeightsName]:
        return snapshot_names(params.pretrained, params.revision, "depth model")

    def target_specs(self) -> dict[str, TargetSpec]:
        side = self.output_size
        what = "relative inverse depth" if self.depth_space == "disparity" else "depth"
        return {"depth": TargetSpec(("B", 1, side, side), f"{what} map (predicted_depth)")}

    def component_names(self) -> list[str]:
        return ["model"]

    def component(self, name: str) -> nn.Module:
        return self.model if name == "model" else super().component(name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], resized to ``input_size`` here.
            targets: ``["depth"]``.
            prompts: unused.

        Returns:
            ``depth`` ``[B, 1, S, S]``, ``S`` the ``output_size``.
        """
        unknown = sorted(set(targets) - {"depth"})
        if unknown:
            raise ValueError(f"depth teacher has no target {unknown}; it has ['depth']")
        if not targets:
            return {}
        return {"depth": self.depth_maps(images)}

    @torch.no_grad()
    def depth_maps(self, images: Tensor) -> Tensor:
        """The model's map of ``images`` ``[B, 3, H, W]`` in [0, 1] as ``[B, 1, S, S]``."""
        predicted = self.model(pixel_values=self.prepare(images)).predicted_depth
        maps = predicted.unsqueeze(1) if predicted.ndim == 3 else predicted
        if tuple(maps.shape[-2:]) != (self.output_size, self.output_size):
            shrink = maps.shape[-1] > self.output_size
            maps = F.interpolate(
                maps, size=(self.output_size,) * 2, mode="bilinear", antialias=shrink
            )
        return maps
