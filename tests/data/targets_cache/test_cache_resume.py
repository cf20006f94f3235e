"""An interrupted ``vmerge cache`` keeps its finished shards; the rerun completes identically."""

from __future__ import annotations

from pathlib import Path

from mergekit_vision.cli.main import main
from mergekit_vision.tools import cache_writer as writer

from .conftest import keyed_args


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in the middle of the third shard (the CLI exits 130)."""


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_resume_after_interruption_gives_identical_files(
    built_cache, tiny_recipe_args, tmp_path, monkeypatch
):
    args = ["cache", *keyed_args(tiny_recipe_args, None), "--task", "sam", "--shard-size", "3"]
    real, calls = writer._write_shard, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted
        return real(*a, **k)

    monkeypatch.setattr(writer, "_write_shard", crash_on_third)
    assert main([*args, "--output", str(tmp_path)]) == 130
    folder = tmp_path / "sam"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert not (folder / "manifest.json").read_text().count('"complete": true')
    shards_written = []
    monkeypatch.setattr(
        writer, "_write_shard", lambda *a, **k: shards_written.append(1) or real(*a, **k)
    )
    assert main([*args, "--output", str(tmp_path)]) == 0
    assert len(shards_written) == 1  # 8 samples in shards of 3: only the last was left
    assert files(folder) == files(built_cache / "sam")


def test_other_settings_in_folder_refused(built_cache, tiny_recipe_args, tmp_path, capsys):
    args = ["cache", *keyed_args(tiny_recipe_args, None), "--task", "sam", "--shard-size", "3"]
    assert main([*args, "--output", str(tmp_path)]) == 0
    code = main([*args, "--set", "tasks.sam.views=1", "--output", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "holds a cache of something else" in err and "--overwrite" in err
    assert "identity.views: cached 2, recipe 1" in err


def test_complete_cache_is_not_recomputed(built_cache, tiny_recipe_args, monkeypatch, capsys):
    before = files(built_cache / "clip")
    monkeypatch.setattr(writer, "_write_shard", lambda *a, **k: 1 / 0)
    args = ["cache", *keyed_args(tiny_recipe_args, built_cache), "--shard-size", "3"]
    assert main([*args, "--task", "clip"]) == 0
    assert "0 shards written, 3 kept" in " ".join(capsys.readouterr().out.split())
    assert files(built_cache / "clip") == before
