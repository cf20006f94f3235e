"""The one list of built-in plugin modules.

Registries import these lazily on first lookup, so ``import mergekit_vision`` stays light and every
built-in is found in one place. Plugins of other packages come through entry points instead
(see ``docs/writing-a-teacher.md``).
"""

from __future__ import annotations

import importlib

BUILTIN_MODULES: tuple[str, ...] = (
    # the zoo
    "mergekit_vision.teachers.sam",
    "mergekit_vision.teachers.open_clip",
    "mergekit_vision.teachers.timm",
    "mergekit_vision.teachers.hf",
    "mergekit_vision.teachers.sam2",
    "mergekit_vision.teachers.depth",
    "mergekit_vision.teachers.merged_run",
    "mergekit_vision.students.vitdet",
    "mergekit_vision.students.timm_vit",
    "mergekit_vision.students.timm_features",
    "mergekit_vision.students.sam2_hiera",
    "mergekit_vision.students.radio",
    # the machinery
    "mergekit_vision.heads.clip_head",
    "mergekit_vision.heads.sam_head",
    "mergekit_vision.heads.sam2_head",
    "mergekit_vision.heads.adaptor",
    "mergekit_vision.heads.depth_head",
    "mergekit_vision.heads.ladder",
    "mergekit_vision.losses.contrastive",
    "mergekit_vision.losses.cosine",
    "mergekit_vision.losses.focal_dice",
    "mergekit_vision.losses.feature",
    "mergekit_vision.losses.mse",
    "mergekit_vision.losses.ssi",
    "mergekit_vision.strategies.replay.fixed_ratio",
    "mergekit_vision.strategies.replay.alternating",
    "mergekit_vision.strategies.replay.proportional",
    "mergekit_vision.strategies.replay.curriculum",
    "mergekit_vision.strategies.replay.forgetting_adaptive",
    "mergekit_vision.strategies.replay.teacher_drop",
    "mergekit_vision.strategies.replay.random_subset",
    "mergekit_vision.strategies.conflict.sum",
    "mergekit_vision.strategies.conflict.pcgrad",
    "mergekit_vision.strategies.conflict.upgrad",
    "mergekit_vision.strategies.conflict.mgda",
    "mergekit_vision.strategies.conflict.cagrad",
    "mergekit_vision.strategies.conflict.imtl_g",
    "mergekit_vision.strategies.conflict.aligned_mtl",
    "mergekit_vision.strategies.conflict.dualproj",
    "mergekit_vision.strategies.conflict.config",
    "mergekit_vision.strategies.conflict.graddrop",
    "mergekit_vision.strategies.conflict.nash_mtl",
    "mergekit_vision.strategies.weighting.static",
    "mergekit_vision.strategies.weighting.uncertainty",
    "mergekit_vision.strategies.weighting.gradnorm",
    "mergekit_vision.strategies.weighting.dwa",
    "mergekit_vision.strategies.weighting.famo",
    "mergekit_vision.strategies.normalization.standardize",
    "mergekit_vision.strategies.normalization.phi_s",
    "mergekit_vision.strategies.normalization.teacher_norm",
    "mergekit_vision.strategies.upsampling.tile_stitch",
    "mergekit_vision.strategies.upsampling.learned",
    "mergekit_vision.data.image_folder",
    "mergekit_vision.data.webdataset_shards",
    "mergekit_vision.data.sa1b",
    "mergekit_vision.data.coco",
    "mergekit_vision.data.synthetic",
    "mergekit_vision.data.toy_world.dataset",
    "mergekit_vision.data.voc",
    "mergekit_vision.data.image_classes",
    "mergekit_vision.data.captions",
    "mergekit_vision.data.depth_folder",
    "mergekit_vision.data.mixture",
    "mergekit_vision.eval.measures.zeroshot_top1",
    "mergekit_vision.eval.measures.promptable_segmentation",
    "mergekit_vision.eval.measures.zeroshot_semseg",
    "mergekit_vision.eval.measures.refined_semseg",
    "mergekit_vision.eval.measures.pipeline_semseg",
    "mergekit_vision.eval.measures.retrieval",
    "mergekit_vision.eval.measures.knn_top1",
    "mergekit_vision.eval.measures.linear_probe",
    "mergekit_vision.eval.measures.linear_seg_probe",
    "mergekit_vision.eval.measures.relative_depth",
    "mergekit_vision.trackers.tensorboard",
    "mergekit_vision.trackers.wandb",
    "mergekit_vision.trackers.mlflow",
    # apps: recipe sections they own
    "mergekit_vision.toy.app",
)

_loaded = False


def load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
