"""The ``toy:`` section of a recipe: the toy app's ``Params`` (see :mod:`.app`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.recipe.ranges import Seed
from mergekit_vision.registry import PluginParams, TeacherName
from mergekit_vision.toy.train_clip import ToyClipTraining
from mergekit_vision.toy.train_depth import ToyDepthTraining
from mergekit_vision.toy.train_sam import ToySamTraining


class ToySpec(PluginParams):
    """Args:
    world: the scene generator's settings (shared by teachers, merge data and evaluation).
    data_dir: where exports go: ``<data_dir>/train`` (WebDataset + COCO), ``<data_dir>/eval``
        (every format) and the probe splits (below); with a ``depth_teacher``, also each
        scene's depth map in ``<data_dir>/train/depth`` and ``<data_dir>/eval/depth`` (16-bit
        PNG millimetres, read by ``depth_folder`` with ``images: <split>/coco/images``).
    train_seed, eval_seed: toy-world seeds of the merge's training scenes and of the evaluation
        scenes; they must differ (teachers train on their own seeds, see their training params).
    train_samples, eval_samples, eval_per_class: how many scenes to export.
    caption_samples: how many of the evaluation scenes to export as a captioned set, 5 captions
        each (``<data_dir>/eval/captions``, the Karpathy-split JSON that retrieval reads).
    probe_train_seed, probe_heldout_seed: seeds of the frozen-feature probes' two splits,
        ``<data_dir>/probe_train`` and ``<data_dir>/probe_heldout`` (a probe trains on one and
        scores on the other); they must differ from each other and from the seeds above.
    probe_train_samples, probe_heldout_samples: scenes per probe split in the VOC layout; the
        classification folder of a split holds ``samples // classes`` scenes per class.
    sam_teacher, clip_teacher: the recipe's teacher names to train as toy teachers.
    feature_teachers: the recipe's ``timm`` teachers written as untrained toy feature teachers
        (timm's random initialisation, seeded by ``train_seed``, saved to their checkpoint path).
    depth_teacher: the recipe's ``depth`` teacher to train as the toy depth teacher (a tiny
        Depth Anything, saved as a ``save_pretrained`` folder at its checkpoint path), or None
        (then no depth maps are exported either).
    sam_training, clip_training, depth_training: how each toy teacher trains.
    """

    world: ToyWorldConfig = ToyWorldConfig()
    data_dir: Path = Path("runs/toy-data")
    train_seed: Seed = 2000
    eval_seed: Seed = 5
    train_samples: int = Field(3000, ge=1)
    eval_samples: int = Field(150, ge=1)
    eval_per_class: int = Field(10, ge=1)
    caption_samples: int = Field(150, ge=1)
    probe_train_seed: Seed = 3000
    probe_heldout_seed: Seed = 13
    probe_train_samples: int = Field(240, ge=1)
    probe_heldout_samples: int = Field(120, ge=1)
    sam_teacher: TeacherName = "sam"
    clip_teacher: TeacherName = "clip"
    feature_teachers: list[TeacherName] = Field(default_factory=list)
    depth_teacher: TeacherName | None = None
    sam_training: ToySamTraining = ToySamTraining()
    clip_training: ToyClipTraining = ToyClipTraining()
    depth_training: ToyDepthTraining = ToyDepthTraining()
