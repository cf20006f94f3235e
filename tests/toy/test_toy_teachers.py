"""The toy teachers train, lower their loss, save official-format checkpoints the teacher plugins
load, and are cached by configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mergekit_vision.teachers.open_clip import OpenClipParams, OpenClipTeacher
from mergekit_vision.teachers.sam import SamTeacher
from mergekit_vision.toy import fitting
from mergekit_vision.toy import teachers as toy_teachers
from mergekit_vision.toy.fitting import save_atomically
from mergekit_vision.toy.teachers import (
    config_hash,
    ensure_toy_teachers,
    is_current,
    sidecar_path,
)
from mergekit_vision.toy.train_clip import (
    ToyClipTraining,
    evaluate_toy_clip,
    fit_toy_clip,
    multi_positive_clip_loss,
    train_toy_clip,
)
from mergekit_vision.toy.train_sam import (
    ToySamTraining,
    evaluate_toy_sam,
    fit_toy_sam,
    sample_prompts,
    scene_batch,
    train_toy_sam,
)

from .conftest import SAM, WORLD

CLIP = OpenClipParams(
    model="toy-clip-test",
    model_cfg={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
)
# The default toy CLIP's vision tower family (open_clip's ModifiedResNet), tiny.
CLIP_RESNET = CLIP.model_copy(
    update={
        "model_cfg": CLIP.model_cfg
        | {"vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}}
    }
)
SAM_TRAINING = ToySamTraining(steps=24, batch_size=4, prompts_per_image=4, lr=3e-3, warmup=2)
CLIP_TRAINING = ToyClipTraining(steps=24, batch_size=32, lr=3e-3, warmup=2, pool_size=2)


def test_sam_prompts_cover_every_instance_and_hit_their_masks():
    scenes = scene_batch(WORLD, seed=3, start=0, count=4)
    prompts, targets = sample_prompts(
        scenes, num_points=5, num_boxes=2, box_noise=0.1, rng=np.random.default_rng(0)
    )
    assert prompts.points.shape == (4, 5, 1, 2) and prompts.boxes.shape == (4, 2, 4)
    assert targets.shape == (4, 7, 64, 64) and targets.dtype == torch.bool
    for b, scene in enumerate(scenes):
        count = min(len(scene.masks), 5)
        # The first prompts are a permutation of the instances.
        picked = {
            int(scene.masks.flatten(1).eq(t.flatten()).all(1).nonzero()[0])
            for t in targets[b, :count]
        }
        assert len(picked) == count
        for j in range(5):
            x, y = prompts.points[b, j, 0].floor().long().tolist()
            assert targets[b, j, y, x]


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_toy_sam_trains_and_its_checkpoint_loads_in_the_sam_teacher(tmp_path: Path, optimizer: str):
    training = SAM_TRAINING.model_copy(update={"optimizer": optimizer})
    sam, losses = fit_toy_sam(sam_params=SAM, training=training, world=WORLD, progress=False)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    path = train_toy_sam(
        sam_params=SAM,
        training=training,
        world=WORLD,
        output=tmp_path / "sam.pth",
        progress=False,
    )
    # The official format: a plain state dict, the keys of segment_anything's Sam.
    saved = torch.load(path, weights_only=True)
    assert set(saved) == set(sam.state_dict())
    teacher = SamTeacher.build(SAM.model_copy(update={"checkpoint": path}))
    for key, value in teacher.sam.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    # Training is deterministic: the same settings give the same weights.
    torch.testing.assert_close(sam.state_dict(), saved)
    miou = evaluate_toy_sam(teacher, WORLD, num_scenes=6, batch_size=4)
    assert 0.0 <= miou <= 1.0


def test_multi_positive_loss_treats_equal_captions_as_positives():
    def gradient(keys: list[str]) -> float:
        raw = torch.tensor([[1.0, 0.02], [1.0, -0.02], [0.0, 1.0]], requires_grad=True)
        features = torch.nn.functional.normalize(raw)
        loss = multi_positive_clip_loss(
            features, features, logit_scale=torch.tensor(50.0), keys=keys
        )
        loss.backward()
        return float(raw.grad.norm())

    # Rows 0 and 1 show the same content: matching both is already optimal, not a false
    # negative to push apart.
    assert gradient(["a", "a", "b"]) < 0.05 * gradient(["a", "c", "b"])


@pytest.mark.parametrize("params", [CLIP, CLIP_RESNET], ids=["vit", "resnet"])
def test_toy_clip_trains_and_its_checkpoint_loads_in_the_open_clip_teacher(
    tmp_path: Path, params: OpenClipParams
):
    clip, losses = fit_toy_clip(
        clip_params=params, training=CLIP_TRAINING, world=WORLD, progress=False
    )
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.2
    path = train_toy_clip(
        clip_params=params,
        training=CLIP_TRAINING,
        world=WORLD,
        output=tmp_path / "clip.bin",
        progress=False,
    )
    saved = torch.load(path, weights_only=True)
    assert set(saved) == set(clip.state_dict())
    teacher = OpenClipTeacher.build(params.model_copy(update={"checkpoint": path}))
    for key, value in teacher.clip.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    text = teacher.encode_text(["a photo of a red circle.", "a blue star left of a green square"])
    assert text.shape == (2, 32)
    accuracy = evaluate_toy_clip(teacher, WORLD, num_scenes=24, batch_size=12)
    assert 0.0 <= accuracy <= 1.0


@pytest.fixture
def counted_training(monkeypatch) -> dict[str, int]:
    """Replace the two trainings with instant fakes that write a file and count their calls."""
    calls = {"sam": 0, "clip": 0}

    def fake(kind: str):
        def train(*, output: Path, **_) -> Path:
            calls[kind] += 1
            torch.save({"weight": torch.full((2,), float(calls[kind]))}, output)
            return output

        return train

    monkeypatch.setattr(toy_teachers.train_sam, "train_toy_sam", fake("sam"))
    monkeypatch.setattr(toy_teachers.train_clip, "train_toy_clip", fake("clip"))
    return calls


def _ensure(tmp_path: Path, **overrides) -> dict[str, Path]:
    settings = dict(
        sam_params=SAM,
        clip_params=CLIP,
        sam_training=SAM_TRAINING,
        clip_training=CLIP_TRAINING,
        world=WORLD,
        sam_path=tmp_path / "sam.pth",
        clip_path=tmp_path / "clip.bin",
        progress=False,
        parallel=False,  # the monkeypatched trainings exist in this process only
    )
    return ensure_toy_teachers(**(settings | overrides))


def test_cache_reuses_until_the_configuration_changes(tmp_path: Path, counted_training):
    paths = _ensure(tmp_path)
    assert counted_training == {"sam": 1, "clip": 1}
    for path in paths.values():
        assert sidecar_path(path).stat().st_mtime_ns >= path.stat().st_mtime_ns
    _ensure(tmp_path)
    assert counted_training == {"sam": 1, "clip": 1}
    _ensure(tmp_path, sam_training=SAM_TRAINING.model_copy(update={"steps": 25}))
    assert counted_training == {"sam": 2, "clip": 1}
    # The checkpoint path is not part of the configuration; the world is.
    _ensure(tmp_path, clip_params=CLIP.model_copy(update={"checkpoint": Path("elsewhere.bin")}))
    assert counted_training == {"sam": 3, "clip": 1}  # sam_training is back to the old steps
    _ensure(tmp_path, world=WORLD.model_copy(update={"clutter": 0.2}))
    assert counted_training == {"sam": 4, "clip": 2}


def test_sidecar_records_the_configuration_hash(tmp_path: Path, counted_training):
    paths = _ensure(tmp_path)
    record = json.loads(sidecar_path(paths["sam"]).read_text())
    assert record["config_hash"] == config_hash(
        architecture=SAM, training=SAM_TRAINING, world=WORLD
    )
    assert record["checkpoint"] == "sam.pth"
    assert "checkpoint" not in record["architecture"]


def test_missing_sidecar_or_foreign_checkpoint_retrains(tmp_path: Path, counted_training):
    paths = _ensure(tmp_path)
    sidecar_path(paths["sam"]).unlink()  # e.g. a crash between checkpoint and sidecar
    torch.save({"other": torch.zeros(1)}, paths["clip"])  # replaced behind the cache's back
    _ensure(tmp_path)
    assert counted_training == {"sam": 2, "clip": 2}
    digest = config_hash(architecture=SAM, training=SAM_TRAINING, world=WORLD)
    assert is_current(paths["sam"], digest)


def test_crash_while_saving_leaves_no_checkpoint_and_no_sidecar(tmp_path: Path, monkeypatch):
    def torn_save(state_dict, target) -> None:
        Path(target).write_bytes(b"half a checkpoint")
        raise RuntimeError("killed while saving")

    def train(*, output: Path, **_) -> Path:
        return save_atomically({"weight": torch.zeros(2)}, output)

    monkeypatch.setattr(toy_teachers.train_sam, "train_toy_sam", train)
    monkeypatch.setattr(fitting.torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="killed while saving"):
        _ensure(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no sidecar, no temporary file


def test_parallel_training_writes_both_teachers_with_their_records(tmp_path: Path):
    tiny_sam = SAM_TRAINING.model_copy(update={"steps": 2})
    tiny_clip = CLIP_TRAINING.model_copy(update={"steps": 2})
    paths = _ensure(tmp_path, sam_training=tiny_sam, clip_training=tiny_clip, parallel=True)
    assert is_current(paths["sam"], config_hash(architecture=SAM, training=tiny_sam, world=WORLD))
    assert is_current(
        paths["clip"], config_hash(architecture=CLIP, training=tiny_clip, world=WORLD)
    )
    sam = SamTeacher.build(SAM.model_copy(update={"checkpoint": paths["sam"]}))
    clip = OpenClipTeacher.build(CLIP.model_copy(update={"checkpoint": paths["clip"]}))
    assert sam is not None and clip is not None


def test_the_last_training_running_takes_the_idle_cores():
    import multiprocessing

    before = torch.get_num_threads()
    running = multiprocessing.get_context("spawn").Value("i", 2)
    share = fitting.CoreShare(running, cores=2)
    try:
        torch.set_num_threads(1)
        share.claim_idle()
        assert torch.get_num_threads() == 1  # the other training still runs
        running.value = 1
        share.claim_idle()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
