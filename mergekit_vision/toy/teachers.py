"""The toy teachers, trained once and cached: a tiny real SAM, CLIP and Depth Anything.

A checkpoint is reused only while the JSON sidecar beside it (``<checkpoint>.json``) records the
same configuration hash: the sha256 of the architecture (minus its checkpoint path), the training
settings, the toy world and :data:`TOY_TEACHER_FORMAT`, and the checkpoint's own sha256 (of every
file, for the depth teacher's ``save_pretrained`` folder). The checkpoint is written first and
the sidecar after it, each through a temporary file or folder renamed into place, so a crash at
any point leaves either a complete, recorded pair or a teacher that will be retrained: never a
checkpoint that only looks finished.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.engine.performance import flush_denormals
from mergekit_vision.registry import PluginParams
from mergekit_vision.teachers.depth import DepthParams
from mergekit_vision.teachers.open_clip import OpenClipParams
from mergekit_vision.teachers.sam import SamParams
from mergekit_vision.toy import train_clip, train_depth, train_sam
from mergekit_vision.toy.fitting import CoreShare, ProgressRelay, report_progress_to
from mergekit_vision.toy.train_clip import ToyClipTraining
from mergekit_vision.toy.train_depth import TOY_DEPTH_CONFIG, ToyDepthTraining
from mergekit_vision.toy.train_sam import ToySamTraining

# Bump when training code changes what a given configuration produces: old caches then retrain.
TOY_TEACHER_FORMAT = 2

TOY_SAM = SamParams(
    variant="custom",
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    image_size=128,
    patch_size=8,
    window_size=8,
    prompt_embed_dim=64,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    mask_in_chans=8,
)
"""The toy SAM architecture (~1.2M parameters), for 128 px toy scenes."""

TOY_CLIP = OpenClipParams(
    model="toy-clip",
    model_cfg={
        "embed_dim": 64,
        # open_clip's ModifiedResNet (CLIP's RN50 design, Radford et al. 2021) at width 16: on
        # this CPU budget it learned shape ~2x faster than a 4-layer ViT of the same cost.
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
        "text_cfg": {
            "context_length": 24,
            "vocab_size": 49408,
            "width": 128,
            "heads": 4,
            "layers": 3,
        },
    },
)
"""The toy CLIP architecture: a 64 px ResNet and a 3-layer text transformer with open_clip's BPE."""

TOY_DEPTH = DepthParams(config=TOY_DEPTH_CONFIG)
"""The toy depth architecture: transformers' Depth Anything at 64 px (:data:`TOY_DEPTH_CONFIG`)."""


# Where a teacher's weights come from, not what they are: left out of the configuration hash, so
# a new field of this kind (pretrained, sha256 came with weights by name) keeps cached teachers.
WEIGHT_SOURCE_FIELDS = {"checkpoint", "pretrained", "sha256", "revision"}


def architecture_record(architecture: PluginParams) -> dict[str, Any]:
    return architecture.model_dump(mode="json", exclude=WEIGHT_SOURCE_FIELDS)


def config_hash(
    *, architecture: PluginParams, training: PluginParams, world: ToyWorldConfig
) -> str:
    """sha256 of everything that determines a toy teacher's weights."""
    payload = {
        "format": TOY_TEACHER_FORMAT,
        "architecture": architecture_record(architecture),
        "training": training.model_dump(mode="json"),
        "world": world.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".json")


def file_sha256(path: Path) -> str:
    """The file's sha256; for a folder, the sha256 of its files' relative paths and sha256s."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = "".join(f"{p.relative_to(path).as_posix()} {file_sha256(p)}\n" for p in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_current(checkpoint: Path, digest: str) -> bool:
    """Whether ``checkpoint`` exists and its sidecar records ``digest`` and the file's sha256."""
    sidecar = sidecar_path(checkpoint)
    if not checkpoint.exists() or not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        isinstance(record, dict)
        and record.get("config_hash") == digest
        and record.get("checkpoint_sha256") == file_sha256(checkpoint)
    )


def write_json_atomically(record: dict[str, Any], path: Path) -> None:
    """Write ``record`` to a temporary file beside ``path`` and rename it into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream, indent=2, sort_keys=True)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def ensure_toy_teacher(
    *,
    architecture: PluginParams,
    training: PluginParams,
    world: ToyWorldConfig,
    path: Path,
    train: Callable[[Path], Path],
) -> bool:
    """Train with ``train(path)`` unless ``path`` is current for this configuration.

    Returns:
        Whether it trained.
    """
    digest = config_hash(architecture=architecture, training=training, world=world)
    if is_current(path, digest):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = sidecar_path(path)
    # The old record must go first: a crash mid-training must not leave it beside a new file.
    sidecar.unlink(missing_ok=True)
    started = time.perf_counter()
    train(output=path)
    record = {
        "config_hash": digest,
        "checkpoint": path.name,
        "checkpoint_sha256": file_sha256(path),
        "format": TOY_TEACHER_FORMAT,
        "architecture": architecture_record(architecture),
        "training": training.model_dump(mode="json"),
        "world": world.model_dump(mode="json"),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomically(record, sidecar)
    return True


def ensure_toy_teachers(
    *,
    sam_params: SamParams = TOY_SAM,
    clip_params: OpenClipParams = TOY_CLIP,
    sam_training: ToySamTraining | None = None,
    clip_training: ToyClipTraining | None = None,
    world: ToyWorldConfig | None = None,
    sam_path: Path,
    clip_path: Path,
    depth_params: DepthParams | None = None,
    depth_training: ToyDepthTraining | None = None,
    depth_path: Path | None = None,
    progress: bool = True,
    parallel: bool | None = None,
) -> dict[str, Path]:
    """The toy SAM and CLIP checkpoints (and with ``depth_path`` the toy depth teacher's), trained
    only when missing or out of date.

    Args:
        sam_params: the SAM architecture (its ``checkpoint`` field is ignored).
        clip_params: the CLIP architecture (``model_cfg``; ``checkpoint`` is ignored).
        sam_training: SAM training settings (default :class:`ToySamTraining`).
        clip_training: CLIP training settings (default :class:`ToyClipTraining`).
        world: the toy world both train on (default :class:`ToyWorldConfig`).
        sam_path: SAM checkpoint file (``torch.save(sam.state_dict())``, e.g. ``sam_toy.pth``).
        clip_path: CLIP checkpoint file (``torch.save(model.state_dict())``, e.g. ``clip_toy.bin``).
        depth_params: the depth architecture (default :data:`TOY_DEPTH`; a ``config`` of None
            means the toy's; weight sources are ignored).
        depth_training: depth training settings (default :class:`ToyDepthTraining`).
        depth_path: the depth teacher's ``save_pretrained`` folder (e.g. ``depth_toy``); None
            trains no depth teacher.
        progress: show progress bars while training.
        parallel: when several must train, train them at once in processes of one thread each
            (default: when torch has at least 2 threads). Models this small keep one core busy
            far better than they split an operation over two, so on 2 cores this measured ~1.5x
            faster than training one after the other. The one still running then takes all
            threads, at a step that depends on timing, so two trainings of one config agree only
            up to float rounding (two fresh clones of one config: SAM point mIoU 0.748 in both, mask
            AP 0.480 and 0.489).

    Returns:
        ``{"sam": sam_path, "clip": clip_path}``, and ``"depth": depth_path`` when given.
    """
    world = world or ToyWorldConfig()
    sam_training = sam_training or ToySamTraining()
    clip_training = clip_training or ToyClipTraining()
    jobs = [
        _Job(
            architecture=sam_params,
            training=sam_training,
            world=world,
            path=sam_path,
            train=partial(_train_sam, sam_params, sam_training, world),
        ),
        _Job(
            architecture=clip_params,
            training=clip_training,
            world=world,
            path=clip_path,
            train=partial(_train_clip, clip_params, clip_training, world),
        ),
    ]
    if depth_path is not None:
        architecture = train_depth.toy_architecture(depth_params or TOY_DEPTH)
        training = depth_training or ToyDepthTraining()
        jobs.append(
            _Job(
                architecture=architecture,
                training=training,
                world=world,
                path=depth_path,
                train=partial(_train_depth, architecture, training, world),
            )
        )
    stale = [job for job in jobs if not job.is_current()]
    if parallel is None:
        parallel = torch.get_num_threads() >= 2
    if len(stale) > 1 and parallel:
        _run_in_processes(stale, progress=progress)
    else:
        for job in stale:
            job.run(progress=progress)
    paths = {"sam": sam_path, "clip": clip_path}
    return paths if depth_path is None else paths | {"depth": depth_path}


def _train_sam(params, training, world, *, output: Path, progress: bool) -> Path:
    return train_sam.train_toy_sam(
        sam_params=params, training=training, world=world, output=output, progress=progress
    )


def _train_clip(params, training, world, *, output: Path, progress: bool) -> Path:
    return train_clip.train_toy_clip(
        clip_params=params, training=training, world=world, output=output, progress=progress
    )


def _train_depth(params, training, world, *, output: Path, progress: bool) -> Path:
    return train_depth.train_toy_depth(
        depth_params=params, training=training, world=world, output=output, progress=progress
    )


@dataclass(frozen=True)
class _Job:
    """One toy teacher to make current; picklable, so a worker process can run it."""

    architecture: PluginParams
    training: PluginParams
    world: ToyWorldConfig
    path: Path
    train: Callable[..., Path]

    def is_current(self) -> bool:
        digest = config_hash(
            architecture=self.architecture, training=self.training, world=self.world
        )
        return is_current(self.path, digest)

    def run(self, *, progress: bool) -> bool:
        return ensure_toy_teacher(
            architecture=self.architecture,
            training=self.training,
            world=self.world,
            path=self.path,
            train=partial(self.train, progress=progress),
        )


def _worker(job: _Job, queue: Any, running: Any, cores: int) -> None:
    flush_denormals()  # a spawned process starts with the CPU's default
    torch.set_num_threads(1)
    report_progress_to(queue, cores=CoreShare(running, cores))
    try:
        job.run(progress=True)
    finally:
        with running.get_lock():
            running.value -= 1


def _run_in_processes(jobs: list[_Job], *, progress: bool) -> None:
    """Run ``jobs`` in spawned processes of one thread each, relaying their progress to bars
    here; the last one running takes all of this process's threads."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    running = context.Value("i", len(jobs))
    cores = torch.get_num_threads()
    workers = [context.Process(target=_worker, args=(job, queue, running, cores)) for job in jobs]
    for worker in workers:
        worker.start()
    with ProgressRelay(enabled=progress) as relay:
        while any(worker.is_alive() for worker in workers):
            relay.drain(queue, timeout=0.5)
        relay.drain(queue, timeout=0)
    failed = [job.path.name for job, worker in zip(jobs, workers, strict=True) if worker.exitcode]
    if failed:
        raise RuntimeError(f"training the toy teacher(s) {failed} failed (see the error above)")
