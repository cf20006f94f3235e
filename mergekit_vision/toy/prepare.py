"""The toy world's part of a recipe: what data to export and how to train the toy teachers.

A recipe with a ``toy:`` section is self-sufficient on a laptop: before anything else,
:func:`prepare_toy` exports the training and evaluation scenes in the real formats the recipe's
loaders read (skipped when an export with the same config is already on disk), and trains the toy
teachers whose checkpoints are missing or were trained from another config.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from mergekit_vision.data.toy_world.depth_maps import export_depth
from mergekit_vision.data.toy_world.export import (
    export_all,
    export_coco,
    export_probe_split,
    export_webdataset,
)
from mergekit_vision.toy.spec import ToySpec


def prepare_toy(
    recipe, *, progress: bool = True, console: Console | None = None, teachers: bool = True
) -> None:
    """Export the toy data and train the toy teachers a recipe needs (both cached on disk)."""
    from mergekit_vision.errors import Issue, RecipeError

    toy: ToySpec = recipe.toy
    if toy.train_seed == toy.eval_seed:
        issue = Issue("toy.eval_seed", "must differ from toy.train_seed: evaluate on unseen scenes")
        raise RecipeError(recipe.name, [issue])
    earlier = {"toy.train_seed": toy.train_seed, "toy.eval_seed": toy.eval_seed}
    for field in ("probe_train_seed", "probe_heldout_seed"):
        same = [name for name, seed in earlier.items() if seed == getattr(toy, field)]
        if same:
            issue = Issue(f"toy.{field}", f"must differ from {same[0]}: probe on other scenes")
            raise RecipeError(recipe.name, [issue])
        earlier[f"toy.{field}"] = getattr(toy, field)
    console = console or Console(stderr=True)
    export_toy_data(toy, console=console)
    if not teachers:
        return
    write_feature_teachers(recipe, console=console)
    from mergekit_vision.toy.teachers import ensure_toy_teachers

    sam_params = recipe.teachers[toy.sam_teacher].params
    clip_params = recipe.teachers[toy.clip_teacher].params
    depth_params = _depth_teacher_params(recipe)
    trained = [(toy.sam_teacher, sam_params), (toy.clip_teacher, clip_params)]
    if depth_params is not None:
        trained.append((toy.depth_teacher, depth_params))
    for name, params in trained:
        if params.checkpoint is None:
            issue = Issue(f"teachers.{name}.params.checkpoint", "give the toy teacher's file path")
            raise RecipeError(recipe.name, [issue])
    ensure_toy_teachers(
        sam_params=sam_params,
        clip_params=clip_params,
        sam_training=toy.sam_training,
        clip_training=toy.clip_training,
        world=toy.world,
        sam_path=sam_params.checkpoint,
        clip_path=clip_params.checkpoint,
        depth_params=depth_params,
        depth_training=toy.depth_training,
        depth_path=None if depth_params is None else depth_params.checkpoint,
        progress=progress,
    )


def _depth_teacher_params(recipe):
    """The params of the recipe's ``toy.depth_teacher`` (a ``depth`` teacher), or None."""
    from mergekit_vision.errors import Issue, RecipeError

    name = recipe.toy.depth_teacher
    if name is None:
        return None
    spec = recipe.teachers.get(name)
    if spec is None or spec.type != "depth":
        issue = Issue("toy.depth_teacher", f"must name a 'depth' teacher; {name!r} is not one")
        raise RecipeError(recipe.name, [issue])
    return spec.params


def write_feature_teachers(recipe, *, console: Console) -> None:
    """Write the ``toy.feature_teachers`` (timm teachers) as untrained checkpoints.

    No pretrained weights exist offline and no self-supervised training fits the toy budget, so a
    toy feature teacher is timm's own random initialisation of the recipe's architecture, seeded
    by ``toy.train_seed``: a fixed, image-dependent feature function for the merge to retain.
    Written as ``.safetensors`` (or ``torch.save`` for other suffixes) with a sidecar of its
    config; rewritten only when that config changes.
    """
    import timm
    import torch

    from mergekit_vision.errors import Issue, RecipeError
    from mergekit_vision.toy.teachers import WEIGHT_SOURCE_FIELDS

    toy: ToySpec = recipe.toy
    for name in toy.feature_teachers:
        spec = recipe.teachers.get(name)
        where = f"toy.feature_teachers ({name})"
        if spec is None or spec.type != "timm":
            raise RecipeError(recipe.name, [Issue(where, "must name a 'timm' teacher")])
        params = spec.params
        if params.checkpoint is None:
            issue = Issue(f"teachers.{name}.params.checkpoint", "give the toy teacher's file path")
            raise RecipeError(recipe.name, [issue])
        path = Path(params.checkpoint)
        key = {"params": params.model_dump(mode="json", exclude=WEIGHT_SOURCE_FIELDS),
               "seed": toy.train_seed}  # fmt: skip
        sidecar = path.with_name(path.name + ".json")
        if path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == key:
            continue
        console.print(f"writing untrained toy feature teacher {name!r} to {path}")
        torch.manual_seed(toy.train_seed)
        model = timm.create_model(params.model, pretrained=False, **params.model_kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
        tmp.replace(path)
        _stamp_file(sidecar, key)


def _stamp_file(path: Path, key: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(key))
    tmp.replace(path)


def export_toy_data(toy: ToySpec, *, console: Console) -> None:
    """Write ``train/``, ``eval/``, ``probe_train/`` and ``probe_heldout/`` under
    ``toy.data_dir``, each unless already there."""
    train, evaluation = toy.data_dir / "train", toy.data_dir / "eval"
    world = toy.world
    single = toy.clip_training.single_object_fraction
    key = {"world": world.model_dump(mode="json"), "seed": toy.train_seed, "n": toy.train_samples,
           "webdataset_single_object_fraction": single}  # fmt: skip
    if not _fresh(train, key):
        console.print(f"exporting {toy.train_samples} toy training scenes to {train}")
        count, seed = toy.train_samples, toy.train_seed
        # CLIP distillation images follow the CLIP teacher's own image mix; SAM's are cluttered.
        export_webdataset(
            train / "webdataset",
            config=world,
            num_samples=count,
            seed=seed,
            single_object_fraction=single,
        )
        export_coco(train / "coco", config=world, num_samples=count, seed=seed)
        _stamp(train, key)
    key = {"world": world.model_dump(mode="json"), "seed": toy.eval_seed, "n": toy.eval_samples,
           "per_class": toy.eval_per_class, "captions": toy.caption_samples}  # fmt: skip
    if not _fresh(evaluation, key):
        console.print(f"exporting {toy.eval_samples} toy evaluation scenes to {evaluation}")
        export_all(
            evaluation,
            config=world,
            num_samples=toy.eval_samples,
            seed=toy.eval_seed,
            num_per_class=toy.eval_per_class,
            num_captioned=toy.caption_samples,
        )
        _stamp(evaluation, key)
    probes = (("train", toy.probe_train_seed, toy.probe_train_samples),
              ("heldout", toy.probe_heldout_seed, toy.probe_heldout_samples))  # fmt: skip
    for role, seed, count in probes:
        folder = toy.data_dir / f"probe_{role}"
        key = {"world": world.model_dump(mode="json"), "seed": seed, "n": count}
        if not _fresh(folder, key):
            console.print(f"exporting {count} toy probe {role} scenes to {folder}")
            split = "train" if role == "train" else "val"
            export_probe_split(folder, config=world, num_samples=count, seed=seed, split=split)
            _stamp(folder, key)
    if toy.depth_teacher is not None:
        export_depth_maps(toy, console=console)


# Bump when the depth maps a given world and seed produce change: old exports are then redone.
DEPTH_MAPS_FORMAT = 1


def export_depth_maps(toy: ToySpec, *, console: Console) -> None:
    """Write ``train/depth/`` and ``eval/depth/``: the depth map of each scene the split's COCO
    export holds (``depth_folder`` reads them with ``images: <split>/coco/images``), each unless
    already there. Their own stamp, so adding depth redoes none of the other exports."""
    world = toy.world.model_dump(mode="json")
    for split, seed, count in (("train", toy.train_seed, toy.train_samples),
                               ("eval", toy.eval_seed, toy.eval_samples)):  # fmt: skip
        folder = toy.data_dir / split / "depth"
        key = {"world": world, "seed": seed, "n": count, "depth_maps": DEPTH_MAPS_FORMAT}
        if not _fresh(folder, key):
            console.print(f"exporting {count} toy {split} depth maps to {folder}")
            images = toy.data_dir / split / "coco" / "images"
            export_depth(folder, config=toy.world, num_samples=count, seed=seed, images=images)
            _stamp(folder, key)


STAMP = "export.json"


def _fresh(folder: Path, key: dict) -> bool:
    stamp = folder / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()) == key


def _stamp(folder: Path, key: dict) -> None:
    """Written last: an export interrupted half-way is redone, never trusted."""
    tmp = folder / (STAMP + ".tmp")
    tmp.write_text(json.dumps(key))
    tmp.replace(folder / STAMP)
