"""A recipe that names its weights instead of giving paths, on a machine without internet
(HF_HUB_OFFLINE=1) whose Hub cache the test wrote: `vmerge validate`, `vmerge fetch` and
`vmerge run --dry-run` use the cache; a missing name, or a SAM file with another SHA-256, stops
the run with an error naming the recipe field, the name and the cache folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.sam.releases import SAM_RELEASES

from ..conftest import TINY_RECIPE
from ..hub_cache import offline_hub, sha256_of, write_hub_repo

CLIP_REPO = "tiny-org/tiny-clip"


@pytest.fixture
def named_recipe(tmp_path, monkeypatch, tiny_checkpoints) -> tuple[Path, Path]:
    """The tiny recipe with hub names only (SAM ``vit_b``, CLIP ``hf-hub:``), its weights put
    in a Hub cache under ``HF_HOME``; the recipe and ``HF_HOME``."""
    home = tmp_path / "hf"
    cache = offline_hub(monkeypatch, home)
    release = home / "segment_anything" / SAM_RELEASES["vit_b"].filename
    release.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoints["sam"], release)
    data = yaml.safe_load(TINY_RECIPE.read_text())
    clip = data["teachers"]["clip"]["params"]
    files = {
        "open_clip_pytorch_model.bin": tiny_checkpoints["clip"],
        "open_clip_config.json": json.dumps({"model_cfg": clip["model_cfg"]}).encode(),
    }
    write_hub_repo(cache, CLIP_REPO, files)
    sam = data["teachers"]["sam"]["params"]
    del sam["checkpoint"], clip["checkpoint"]
    # the tiny test SAM stands in for the release: its own digest replaces the official one
    sam.update(pretrained="vit_b", sha256=sha256_of(release))
    clip["pretrained"] = f"hf-hub:{CLIP_REPO}"
    recipe = tmp_path / "named.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe, home


def test_a_recipe_of_names_validates_fetches_and_dry_runs_offline(
    named_recipe, tmp_path, capsys, recwarn
):
    recipe, home = named_recipe
    assert main(["validate", str(recipe)]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["teachers"]["clip"]["params"]["pretrained"] == f"hf-hub:{CLIP_REPO}"
    assert "not cached" not in err

    assert main(["fetch", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "cached teachers.sam.params.pretrained: 'vit_b'" in out
    assert f"cached teachers.clip.params.pretrained: 'hf-hub:{CLIP_REPO}'" in out

    run = tmp_path / "dry"
    assert main(["run", str(recipe), "--dry-run", "--output", str(run)]) == 0
    assert not [w for w in recwarn if "not in the local cache" in str(w.message)]
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    # kept, not dropped for random weights: both were read from the cache
    assert resolved["teachers"]["sam"]["params"]["pretrained"] == "vit_b"
    assert resolved["teachers"]["clip"]["params"]["pretrained"] == f"hf-hub:{CLIP_REPO}"


def test_a_missing_name_is_an_error_naming_field_name_and_cache_folder(named_recipe, capsys):
    recipe, home = named_recipe
    folder = home / "hub" / "models--tiny-org--tiny-clip"
    shutil.rmtree(folder)
    expected = (
        "teachers.clip.params.pretrained",
        f"'hf-hub:{CLIP_REPO}'",
        str(folder),
        "HF_HUB_OFFLINE=1",
    )

    assert main(["validate", str(recipe)]) == 0  # the recipe is right; the cache lacks a file
    err = capsys.readouterr().err
    assert "not cached: teachers.clip.params.pretrained" in err and str(folder) in err
    assert "teachers.sam" not in err

    assert main(["fetch", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in expected), err

    run = recipe.parent / "run"
    assert main(["run", str(recipe), "--output", str(run), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in expected), err
    assert "Traceback" not in err and not run.exists()

    with pytest.warns(UserWarning, match="teachers.clip.params.pretrained .* random weights"):
        assert main(["run", str(recipe), "--dry-run", "--output", str(run)]) == 0


def test_a_sam_file_with_another_sha256_stops_the_run_before_loading(named_recipe, capsys):
    recipe, home = named_recipe
    release = home / "segment_anything" / SAM_RELEASES["vit_b"].filename
    damaged = bytearray(release.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one byte changed, as a bad disk or download would
    release.write_bytes(bytes(damaged))
    run = recipe.parent / "run"
    assert main(["run", str(recipe), "--dry-run", "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "teachers.sam" in err and "SHA-256" in err and str(release) in err
    assert "nothing was loaded" in err and "Traceback" not in err
    assert not run.exists()
