"""Cached targets are the online teacher's, for the same sample views."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.cli.main import main
from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.targets_cache.reader import open_target_sources
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.step import prepare_images, sample_prompts
from mergekit_vision.tools.cache_writer import without_caches

from .conftest import keyed_args, keyed_recipe


def with_caches(recipe):
    """Components whose tasks read their targets caches, as ``vmerge run`` builds them."""
    return build_components(recipe, target_sources=open_target_sources(recipe))


def batch_of(task, view: int, indices: list[int]) -> dict:
    return collate_samples([task.dataset[(view, i)] for i in indices])


@pytest.mark.parametrize("task_name", ["clip", "sam"])
def test_cached_targets_equal_online(built_cache, tiny_recipe_args, task_name):
    cached_recipe = keyed_recipe(tiny_recipe_args, built_cache)
    online = build_components(without_caches(cached_recipe)).tasks[task_name]
    cached = with_caches(cached_recipe).tasks[task_name]
    assert cached.targets is not None and len(cached.targets) == 8
    name = online.spec.target
    for view in (0, 1, 2):  # epoch 2 is view 0 again
        batch = batch_of(online, view, [5, 2, 7])
        assert batch["view"].tolist() == [view % 2] * 3
        for resolution in online.spec.resolutions():
            images, masks = prepare_images(batch, resolution=resolution, device=torch.device("cpu"))
            prompts = sample_prompts(online, images, masks, torch.Generator(), batch=batch)
            expected = online.teacher(images, targets=[name], prompts=prompts)[name]
            got = cached.targets.target(batch, images)
            assert got.shape == expected.shape and got.dtype == torch.float32
            scale = expected.abs().max()
            torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3 * float(scale))
            if prompts is not None:
                cached_prompts = cached.targets.prompts(batch, images)
                torch.testing.assert_close(cached_prompts.boxes, prompts.boxes)
                torch.testing.assert_close(cached_prompts.points, prompts.points)


def test_views_differ_and_repeat(built_cache, tiny_recipe_args):
    """The two views of a sample are different augmentations; each is the same every time."""
    recipe = keyed_recipe(tiny_recipe_args, None)
    task = build_components(recipe).tasks["clip"]
    first, second, again = task.dataset[(0, 3)], task.dataset[(1, 3)], task.dataset[(2, 3)]
    assert not torch.equal(first["image"], second["image"])
    assert torch.equal(first["image"], again["image"]) and first["view_seed"] == again["view_seed"]
    assert task.dataset[3]["view"] == 0  # a plain index (held-out batches) is view 0


def test_cached_task_never_runs_the_teacher(built_cache, tiny_recipe_args, monkeypatch):
    from mergekit_vision.engine.step import task_loss

    components = with_caches(keyed_recipe(tiny_recipe_args, built_cache))
    for task in components.tasks.values():

        def forbidden(*args, **kwargs):
            raise AssertionError("the teacher ran although its targets are cached")

        monkeypatch.setattr(task.teacher, "forward", forbidden)
        batch = collate_samples([task.dataset[(1, i)] for i in range(2)])
        loss = task_loss(
            task,
            batch,
            model=components.model,
            resolution=task.spec.resolutions()[0],
            generator=torch.Generator(),
            device=torch.device("cpu"),
        )
        assert torch.isfinite(loss)


def test_teacher_sourced_prompts_cached(tiny_recipe_args, tmp_path):
    """Without ground-truth masks the prompts are boxes of the teacher's own masks: cached too."""
    teacher_source = [*tiny_recipe_args, "--set", "tasks.sam.prompts.source=teacher"]
    assert (
        main(
            ["cache", *keyed_args(teacher_source, None), "--task", "sam", "--output", str(tmp_path)]
        )
        == 0
    )
    recipe = keyed_recipe(
        [*teacher_source, "--set", f"tasks.sam.targets_cache={tmp_path / 'sam'}"], None
    )
    online = build_components(without_caches(recipe)).tasks["sam"]
    cached = with_caches(recipe).tasks["sam"]
    assert online.prompt_source == "teacher"
    batch = collate_samples([online.dataset[(1, i)] for i in [6, 1, 3]])
    images, masks = prepare_images(batch, resolution=64, device=torch.device("cpu"))
    prompts = sample_prompts(online, images, masks, torch.Generator(), batch=batch)
    expected = online.teacher(images, targets=["mask_logits"], prompts=prompts)["mask_logits"]
    torch.testing.assert_close(cached.targets.prompts(batch, images).boxes, prompts.boxes)
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        cached.targets.target(batch, images), expected, rtol=2e-3, atol=2e-3 * scale
    )
