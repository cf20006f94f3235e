"""FSDP2 on 2 CPU processes (gloo): trains like one process and resumes at any world size."""

from __future__ import annotations

import shutil

import pytest
import torch

SUM = ["--set", "stages.1.conflict.type=sum"]  # FSDP shards the per-task rows pcgrad would need
TOLERANCE = 2e-5


def test_fsdp_trains_and_resumes_on_two_ranks_and_in_one_process(runs, recipe_args, tmp_path):
    reference = tmp_path / "one"
    runs.run_here([*recipe_args, *SUM, "--output", str(reference)])
    sharded = [*recipe_args, *SUM, "--set", "distributed.strategy=fsdp", *runs.batch_sizes(2, 2)]
    two = tmp_path / "two"
    runs.torchrun([*sharded, "--output", str(two), "--max-steps", "3"])
    # the step-3 checkpoint is the single-process format: resumable in one process ...
    one = tmp_path / "resumed_in_one"
    shutil.copytree(two / "checkpoints" / "last", one / "checkpoints" / "last")
    runs.run_here([*recipe_args, *SUM, "--output", str(one), "--resume"])
    # ... and on 2 ranks again, now 2 x batch 1 x 2 micro-batches (gradient sync on the last)
    accumulating = ["--set", "stages.1.accumulate=2", *runs.batch_sizes(1, 1)]
    runs.torchrun([*sharded, *accumulating, "--output", str(two), "--resume"])
    want, halfway = runs.weights(reference), runs.weights(reference, "step-3")
    assert runs.max_difference(want, halfway, prefix="student.") > 100 * TOLERANCE
    assert runs.max_difference(runs.weights(two, "step-3"), halfway) < TOLERANCE
    assert runs.max_difference(runs.weights(two), want) < TOLERANCE
    assert runs.max_difference(runs.weights(one), want) < TOLERANCE


def test_fsdp_refuses_strategies_that_need_whole_task_gradients(runs, recipe_args, tmp_path):
    """Checked before any collective: no process group is needed to see the refusal."""
    from mergekit_vision.engine.build import build_components
    from mergekit_vision.engine.distributed import World
    from mergekit_vision.engine.loop import Engine
    from mergekit_vision.errors import RecipeError
    from mergekit_vision.recipe.io import load_recipe

    sets = recipe_args[1:][1::2] + ["distributed.strategy=fsdp"]  # pcgrad in stage 1
    recipe = load_recipe(recipe_args[0], sets)
    engine = Engine(
        build_components(recipe), output_dir=tmp_path, recipe_yaml="", world=World(size=2)
    )
    with pytest.raises(
        RecipeError, match=r"stages\.1: conflict 'pcgrad'.*distributed\.strategy ddp"
    ):
        engine.run(progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def _vitdet():
    from mergekit_vision.students.vitdet import ViTDetStudent

    params = ViTDetStudent.Params(variant="custom", embed_dim=32, depth=3, num_heads=2,
                                  global_attn_indexes=(1,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=64, attention="sdpa")  # fmt: skip
    return ViTDetStudent.build(params, teachers={}), torch.rand(2, 3, 64, 48)


def _timm_vit():
    from mergekit_vision.students.timm_vit import TimmViTStudent

    params = TimmViTStudent.Params(
        model="vit_small_patch14_dinov2",
        model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, init_values=1.0),
        native_size=56,
    )
    return TimmViTStudent.build(params, teachers={}), torch.rand(2, 3, 56, 42)


@pytest.mark.parametrize("make", [_vitdet, _timm_vit], ids=["vitdet", "timm_vit"])
@pytest.mark.filterwarnings("error:FSDP2-wrapped module")  # no output may be a view
def test_fsdp_shards_the_student_block_by_block(make, tmp_path):
    """One FSDP2 unit per transformer block (only one block gathered at a time), with activation
    checkpointing (and ViT-Det's fast attention); gradients as without sharding (1 rank)."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from mergekit_vision.engine.build import MergedModel
    from mergekit_vision.engine.distributed import shard_model

    torch.manual_seed(0)
    student, images = make()
    student.activation_checkpointing = True
    plain = copy.deepcopy(student)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        model = MergedModel(student=student, heads={})
        shard_model(model)
        units = student.shard_units()
        assert len(units) >= 2 and all(isinstance(unit, FSDPModule) for unit in units)
        assert isinstance(student, FSDPModule)
        student(images).feature_map.square().mean().backward()
        plain(images).feature_map.square().mean().backward()
        for (name, sharded), reference in zip(
            student.named_parameters(), plain.parameters(), strict=True
        ):
            torch.testing.assert_close(sharded.grad.full_tensor(), reference.grad, msg=name)
    finally:
        dist.destroy_process_group()
