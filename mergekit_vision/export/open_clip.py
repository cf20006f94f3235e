"""The merged image tower as an open_clip model (Cherti et al., arXiv 2212.07143).

The CLIP teacher's open_clip model is kept whole (text tower, ``logit_scale``, tokenizer) and its
``visual`` is replaced by :class:`MergedVisual`: the merged student followed by SAM-CLIP's CLIP head
(Wang et al., arXiv 2310.15308). open_clip's ``CLIP.encode_image`` only calls ``self.visual``, so
``encode_image``, ``encode_text``, ``forward`` and ``open_clip.build_zero_shot_classifier`` work as
for any open_clip model. open_clip has no config for a ViT-Det tower, so the folder is loaded by
:func:`load_open_clip`, which rebuilds the tower from ``open_clip_config.json``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import save_file
from torch import Tensor, nn

from mergekit_vision.contracts import STUDENTS, TEACHERS
from mergekit_vision.export import ExportError
from mergekit_vision.export.loading import LoadedRun
from mergekit_vision.heads.clip_head import ClipHead, make_blocks
from mergekit_vision.recipe.schema import task_of_head
from mergekit_vision.strategies.normalization.base import NORMALIZATION, TargetNormalizer
from mergekit_vision.teachers.open_clip import OpenClipParams, create_clip
from mergekit_vision.weights import load_strict, read_weights

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"


class MergedVisual(nn.Module):
    """An open_clip image tower made of the merged student and its CLIP head.

    It takes images as open_clip's preprocessing leaves them (normalized with ``mean``/``std`` of
    :attr:`preprocess_cfg`, at ``image_size``), undoes that normalization (the student normalizes
    itself) and returns the CLIP head's pooled embedding, mapped back to the teacher's space when
    the head was trained on normalized targets.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        head: ClipHead,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        normalizer: TargetNormalizer | None = None,
    ) -> None:
        """
        Args:
            student: the merged backbone: ``[B, 3, R, R]`` in [0, 1] -> student features.
            head: the CLIP head: student features -> ``{target: [B, D]}``.
            image_size: the side ``R`` the tower is fed at.
            mean: the preprocessing mean (in [0, 1] units).
            std: the preprocessing std.
            normalizer: the target normalization the head predicts in, or None.
        """
        super().__init__()
        self.student, self.head, self.normalizer = student, head, normalizer
        self.image_size = (image_size, image_size)
        self.output_dim = head.out_dim
        self.preprocess_cfg = {
            "size": image_size,
            "mode": "RGB",
            "mean": tuple(mean),
            "std": tuple(std),
            "interpolation": "bilinear",
            "resize_mode": "shortest",
            "fill_color": 0,
        }
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, R, R]`` preprocessed images -> ``[B, D]`` image embeddings (not normalized)."""
        (embedding,) = self.head(self.student(images * self.std + self.mean)).values()
        if self.normalizer is not None:
            embedding = self.normalizer.inverse(embedding)
        return embedding


def export_open_clip(run: LoadedRun, output: Path) -> list[Path]:
    """Write ``open_clip_model.safetensors`` (the whole model) and ``open_clip_config.json``."""
    head_name = run.head_name(ClipHead)
    teacher_name = run.teacher_of(head_name)
    spec = run.recipe.teachers[teacher_name]
    if TEACHERS.get(spec.type).Params is not OpenClipParams:
        raise ExportError(
            f"--format open_clip needs an open_clip CLIP teacher for the text tower; head "
            f"{head_name!r} was distilled from {teacher_name!r} of type {spec.type!r}. "
            "Possible: --format safetensors"
        )
    teacher = run.require_teacher(teacher_name, why="--format open_clip (the text tower)")
    params = spec.params
    model_cfg = params.model_cfg or open_clip.get_model_config(params.model)
    head = run.model.heads[head_name]
    visual, visual_cfg = _merged_visual(run, head_name, head)
    clip = copy.deepcopy(teacher.clip).eval()
    clip.visual = visual
    output.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    save_file(tensors, str(output / OPEN_CLIP_WEIGHTS))
    config = {
        "model_name": params.model if params.model_cfg is None else None,
        "model_cfg": model_cfg,
        "visual": visual_cfg,
    }
    (output / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return [output / OPEN_CLIP_WEIGHTS, output / OPEN_CLIP_CONFIG]


def _merged_visual(run: LoadedRun, head_name: str, head: Any) -> tuple[MergedVisual, dict]:
    recipe = run.recipe
    student = run.model.student
    task_name = task_of_head(recipe.tasks, head_name)
    task = recipe.tasks[task_name]
    normalizer_spec = task.normalize
    size = recipe.eval.resolution if recipe.eval is not None else max(task.resolutions())
    student_params = recipe.student.params.model_dump(
        mode="json", exclude={"init_from", "checkpoint"}
    )
    config = {
        "student": {"type": recipe.student.type, "params": student_params},
        "clip_head": {
            "num_blocks": len(head.blocks),
            "blocks": head.block_kind,
            "out_dim": head.out_dim,
            "target": head.target,
            "mlp_hidden_dim": head.mlp[0].out_features,
            "pooling": head.pooling,
        },
        "normalizer": None
        if normalizer_spec is None
        else {
            "type": normalizer_spec.type,
            "params": normalizer_spec.params.model_dump(mode="json"),
        },
        "image_size": size,
        "mean": list(student.pixel_mean),
        "std": list(student.pixel_std),
    }
    visual = MergedVisual(
        student=copy.deepcopy(student),
        head=copy.deepcopy(head),
        image_size=size,
        mean=tuple(student.pixel_mean),
        std=tuple(student.pixel_std),
        normalizer=copy.deepcopy(run.model.normalizers[task_name])
        if normalizer_spec is not None
        else None,
    )
    return visual.eval(), config


def build_merged_visual(config: dict[str, Any]) -> MergedVisual:
    """An untrained :class:`MergedVisual` of the architecture ``config`` describes."""
    spec = config["student"]
    student_cls = STUDENTS.get(spec["type"])
    student = student_cls.build(
        STUDENTS.params_model(spec["type"]).model_validate(spec["params"]), teachers={}
    )
    head_cfg = config["clip_head"]
    head = ClipHead(
        blocks=make_blocks(head_cfg.get("blocks", "backbone"), head_cfg["num_blocks"], student),
        embed_dim=student.embed_dim,
        out_dim=head_cfg["out_dim"],
        target=head_cfg["target"],
        mlp_hidden_dim=head_cfg["mlp_hidden_dim"],
        pooling=head_cfg["pooling"],
    )
    normalizer = None
    if config["normalizer"] is not None:
        kind = config["normalizer"]["type"]
        params = NORMALIZATION.params_model(kind).model_validate(config["normalizer"]["params"])
        normalizer = NORMALIZATION.get(kind).build(params, dim=head_cfg["out_dim"])
    return MergedVisual(
        student=student,
        head=head,
        image_size=config["image_size"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        normalizer=normalizer,
    )


def load_open_clip(folder: Path | str) -> tuple[nn.Module, Callable, Callable]:
    """``(model, preprocess, tokenizer)`` of an exported folder, as
    ``open_clip.create_model_and_transforms`` + ``open_clip.get_tokenizer`` return them."""
    folder = Path(folder)
    config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    if config["model_name"] is not None:
        params = OpenClipParams(model=config["model_name"])
    else:
        params = OpenClipParams(model="merged", model_cfg=config["model_cfg"])
    clip, name = create_clip(params)
    clip.visual = build_merged_visual(config["visual"])
    path = folder / OPEN_CLIP_WEIGHTS
    expected = f"the open_clip model that vmerge export writes beside {OPEN_CLIP_CONFIG}"
    remedy = "export the run again (vmerge export RUN --format open_clip)"
    weights = read_weights(path, what="exported open_clip", expected=expected, remedy=remedy)
    what = f"exported open_clip weights {path} do not fit the model of {OPEN_CLIP_CONFIG}"
    load_strict(clip, weights, what=what, path=path, expected=expected, remedy=remedy)
    preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    return clip.eval(), preprocess, open_clip.get_tokenizer(name)
