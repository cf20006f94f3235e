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
    "mergekit_vision.students.vitdet",
    "mergekit_vision.students.timm_vit",
    # the machinery
    "mergekit_vision.heads.clip_head",
    "mergekit_vision.heads.sam_head",
    "mergekit_vision.heads.adaptor",
    "mergekit_vision.losses.contrastive",
    "mergekit_vision.losses.cosine",
    "mergekit_vision.losses.focal_dice",
    "mergekit_vision.losses.feature",
    "mergekit_vision.losses.mse",
    "mergekit_vision.replay.fixed_ratio",
    "mergekit_vision.replay.alternating",
    "mergekit_vision.replay.proportional",
    "mergekit_vision.replay.curriculum",
    "mergekit_vision.replay.forgetting_adaptive",
    "mergekit_vision.conflict.sum",
    "mergekit_vision.conflict.pcgrad",
    "mergekit_vision.conflict.upgrad",
    "mergekit_vision.conflict.mgda",
    "mergekit_vision.conflict.cagrad",
    "mergekit_vision.conflict.imtl_g",
    "mergekit_vision.conflict.aligned_mtl",
    "mergekit_vision.conflict.dualproj",
    "mergekit_vision.conflict.config",
    "mergekit_vision.conflict.graddrop",
    "mergekit_vision.conflict.nash_mtl",
    "mergekit_vision.weighting.static",
    "mergekit_vision.weighting.uncertainty",
    "mergekit_vision.weighting.gradnorm",
    "mergekit_vision.weighting.dwa",
    "mergekit_vision.weighting.famo",
    "mergekit_vision.normalization.standardize",
    "mergekit_vision.normalization.phi_s",
    "mergekit_vision.data.image_folder",
    "mergekit_vision.data.webdataset_shards",
    "mergekit_vision.data.sa1b",
    "mergekit_vision.data.coco",
    "mergekit_vision.data.synthetic",
    "mergekit_vision.data.toy_world",
    "mergekit_vision.data.voc",
    "mergekit_vision.data.image_classes",
)

_loaded = False


def load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
