"""Caches written with int8 and pca codecs by ``vmerge cache`` read back as the codec's round
trip of the teacher's targets; their sizes; a codec that cannot store a target is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.targets_cache.codecs import ROWS, parse_codec
from mergekit_vision.data.targets_cache.reader import CachedTargets
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.step import prepare_images, sample_prompts
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.tools import cache_writer as writer
from mergekit_vision.tools.cache_writer import cache_recipe, without_caches

from .conftest import keyed_args
from .test_cache_resume import files

SHARDS = [[0, 1, 2], [3, 4, 5], [6, 7]]  # the tiny recipe's 8 samples in shards of 3


def overrides(args: list[str]) -> list[str]:
    return [a for a in args[1:] if a != "--set"]


@pytest.fixture(scope="module")
def codec_caches(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    """The keyed tiny recipe cached with int8 (both tasks) and pca:4 (the CLIP task)."""
    base = [
        "tests/recipes/tiny_sam_clip.yaml",
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]  # fmt: skip
    args = keyed_args(base, None)
    root = tmp_path_factory.mktemp("codecs")
    options = {"overrides": overrides(args), "shard_size": 3, "progress": False}
    cache_recipe(args[0], tasks=["clip", "sam"], output=root / "int8", codec="int8", **options)
    cache_recipe(args[0], tasks=["clip"], output=root / "pca", codec="pca:4", **options)
    return {"args": args, "int8": root / "int8", "pca": root / "pca"}


def teacher_rows(task, samples: list[int], resolution: int):
    """The online teacher's targets of every view of ``samples`` (row order of a shard)."""
    batch = collate_samples([task.dataset[(v, i)] for i in samples for v in range(2)])
    images, masks = prepare_images(batch, resolution=resolution, device=torch.device("cpu"))
    prompts = sample_prompts(task, images, masks, torch.Generator(), batch=batch)
    name = task.spec.target
    return batch, images, task.teacher(images, targets=[name], prompts=prompts)[name]


def read_back(codec_caches, codec: str, task_name: str) -> tuple:
    args = codec_caches["args"] + ["--set", f"tasks.{task_name}.targets_cache="]
    args[-1] += str(codec_caches[codec] / task_name)
    recipe = load_recipe(args[0], overrides(args))
    online = build_components(without_caches(recipe)).tasks[task_name]
    return online, CachedTargets.open(recipe, task_name, dataset=online.dataset.dataset)


@pytest.mark.parametrize("task_name", ["clip", "sam"])
def test_int8_cache_reads_back_the_codecs_round_trip(codec_caches, task_name):
    online, cached = read_back(codec_caches, "int8", task_name)
    int8 = parse_codec("int8")
    for resolution in online.spec.resolutions():
        for samples in SHARDS:  # int8's scales are per shard
            batch, images, exact = teacher_rows(online, samples, resolution)
            stored = int8.encode(exact, {})
            expected = int8.decode(stored[ROWS], stored)
            got = cached.target(batch, images)
            assert got.dtype == torch.float32 and got.shape == exact.shape
            step = stored["scale"].reshape(1, -1, *[1] * (exact.ndim - 2))
            assert bool(((got - exact).abs() <= step / 2 * 1.001 + 1e-6).all())
            # the same codes and scales (a different code would be a whole step off; the teacher
            # ran in other batches, so the scales may differ in their last bits)
            assert bool(((got - expected).abs() <= 1e-3 * step).all())


def test_pca_cache_reads_back_the_codecs_round_trip(codec_caches):
    online, cached = read_back(codec_caches, "pca", "clip")
    pca = parse_codec("pca:4")
    for resolution in online.spec.resolutions():
        _, _, everything = teacher_rows(online, list(range(8)), resolution)
        shared = pca.fit([everything])  # fit_samples 1024: every sample fits the basis
        state = load_file(codec_caches["pca"] / "clip" / "codec.safetensors")
        file_basis = state[f"{resolution}.target.basis"]
        torch.testing.assert_close(file_basis.T @ file_basis, shared["basis"].T @ shared["basis"])
        for samples in SHARDS:
            batch, images, exact = teacher_rows(online, samples, resolution)
            expected = pca.decode(pca.encode(exact, shared)[ROWS], shared)
            got = cached.target(batch, images)
            assert got.shape == exact.shape == (2 * len(samples), 32)
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-3 * float(exact.abs().max()))
            assert float((got - exact).norm()) > 1e-3 * float(exact.norm())  # 4 of 32: lossy


def stored_size(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    return CachedTargets(task=folder.name, folder=folder, manifest=manifest).stored_size()


def test_bytes_per_image(codec_caches, built_cache):
    """Hand-computed for the keyed tiny recipe: CLIP 2 views x 2 resolutions x 32 values,
    SAM 2 views x 6 prompts x 32 x 32 logits, 8 samples in 3 shards."""
    size = {("fp16", t): stored_size(built_cache / t) for t in ("clip", "sam")}
    size |= {("int8", t): stored_size(codec_caches["int8"] / t) for t in ("clip", "sam")}
    size["pca", "clip"] = stored_size(codec_caches["pca"] / "clip")
    assert size["fp16", "clip"].bytes_per_image == 2 * 2 * 32 * 2 == 256
    assert size["fp16", "clip"].ratio_to_fp16 == 1.0
    # int8: 1 byte a value, plus 32 float32 scales per shard (3) and resolution (2), over 8 samples
    assert size["int8", "clip"].bytes_per_image == 2 * 2 * 32 + 3 * 2 * 32 * 4 / 8 == 224
    assert size["int8", "clip"].fp16_bytes_per_image == 256
    # pca:4: 4 fp16 coefficients a view, plus a [4, 32] basis and [32] mean per resolution
    assert size["pca", "clip"].shared == 2 * (4 * 32 + 32) * 4
    assert size["pca", "clip"].bytes_per_image == 2 * 2 * 4 * 2 + 1280 / 8 == 192
    assert size["pca", "clip"].ratio_to_fp16 == pytest.approx(256 / 192)
    assert size["fp16", "sam"].bytes_per_image == 2 * 6 * 32 * 32 * 2 == 24576
    assert size["int8", "sam"].bytes_per_image == 2 * 6 * 32 * 32 + 3 * 6 * 4 / 8 == 12297


def test_cli_prints_sizes_and_refuses_pca_for_mask_logits(codec_caches, tmp_path, capsys):
    args = ["cache", *codec_caches["args"], "--shard-size", "3", "--output", str(tmp_path)]
    assert main([*args, "--codec", "pca:4"]) == 2  # refused before either task runs
    err = " ".join(capsys.readouterr().err.split())
    assert "tasks.sam.target: --codec pca:4: pca:4 keeps components of a feature axis" in err
    assert "'mask_logits'" in err and "--task sam --codec int8" in err
    assert not any(tmp_path.iterdir())
    assert main([*args, "--task", "clip", "--codec", "pca:4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "targets as pca:4: 192 B/image (fp16: 256 B/image, 1.33x smaller; includes 1,280 B" in out
    )
    # another codec in the same folder is another cache
    assert main([*args, "--task", "clip", "--codec", "int8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert 'codec.name: cached "pca", recipe "int8"' in err and "--overwrite" in err
    assert main([*args, "--task", "clip", "--codec", "pca:5"]) == 2
    assert "codec.components: cached 4, recipe 5" in " ".join(capsys.readouterr().err.split())
    assert main([*args, "--codec", "pca:x"]) == 2
    assert "--codec: pca needs a number of components" in capsys.readouterr().err


def test_resumed_pca_cache_is_identical(codec_caches, tmp_path, monkeypatch):
    """The basis is written before the first shard and read back on resume."""
    real, calls = writer._write_shard, []

    def crash_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(writer, "_write_shard", crash_on_second)
    args = ["cache", *codec_caches["args"], "--task", "clip", "--shard-size", "3"]
    args += ["--codec", "pca:4", "--output", str(tmp_path)]
    assert main(args) == 130
    assert sorted(p.name for p in (tmp_path / "clip").glob("*.safetensors")) == [
        "codec.safetensors",
        "shard-00000.safetensors",
    ]
    monkeypatch.setattr(writer, "fit_codec", lambda *a, **k: 1 / 0)  # not fitted again
    assert main(args) == 0
    assert files(tmp_path / "clip") == files(codec_caches["pca"] / "clip")


def test_cache_before_codecs_reads_as_fp16(built_cache, tiny_recipe_args, tmp_path, capsys):
    """A manifest with ``dtype`` instead of ``codec`` (older caches) is an fp16 cache; the
    former ``--dtype`` option still names it."""
    folder = tmp_path / "clip"
    shutil.copytree(built_cache / "clip", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["dtype"] = "float16"
    del manifest["codec"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    args = ["cache", *keyed_args(tiny_recipe_args, None), "--shard-size", "3", "--task", "clip"]
    assert main([*args, "--output", str(tmp_path), "--dtype", "float16"]) == 0
    out, err = (" ".join(s.split()) for s in capsys.readouterr())
    assert "0 shards written, 3 kept" in out and "256 B/image" in out
    assert "--dtype float16 is now --codec fp16" in err
    assert main([*args, "--output", str(tmp_path), "--dtype", "float16", "--codec", "int8"]) == 2
    assert "--dtype float16 is replaced by --codec" in capsys.readouterr().err


def test_cache_of_a_recipe_without_keyed_tasks(tiny_recipe_args, tmp_path, capsys):
    """`--output` alone caches a recipe whose tasks set no views, augment or targets_cache (the
    toy recipe as it is): the tasks are keyed for the cache, and a run reads it back."""
    args = ["cache", *tiny_recipe_args, "--shard-size", "3", "--task", "clip"]
    assert main([*args, "--output", str(tmp_path), "--codec", "fp16"]) == 0
    assert "3 shards written" in " ".join(capsys.readouterr().out.split())
    manifest = json.loads((tmp_path / "clip" / "manifest.json").read_text())
    assert sum(shard["samples"] for shard in manifest["shards"]) == 8
    cached = load_recipe(
        tiny_recipe_args[0],
        [*overrides(tiny_recipe_args), f"tasks.clip.targets_cache={tmp_path / 'clip'}"],
    )
    task = build_components(cached).tasks["clip"]
    assert len(task.dataset) == 8  # the keyed views of the 8 samples, one view each
