"""A run survives undecodable samples: an image folder or a WebDataset shard with three corrupt
files trains to the end, each skipped file logged once; too many skips stop it with a clear
message; resuming keeps the counts; valid odd images (1x1, 16-bit, RGBA, grayscale, palette,
extreme aspect ratios) train."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mergekit_vision.cli.main import main
from mergekit_vision.data.image_folder import ImageFolderDataset
from mergekit_vision.data.webdataset_shards import WebDatasetShards
from mergekit_vision.engine.distributed import World
from mergekit_vision.engine.loop import _describe
from mergekit_vision.engine.run_folder import RunFolder, TrainState
from mergekit_vision.engine.skips import SkipLedger, SkippedSamplesError
from mergekit_vision.engine.streams import BatchStream

# Clip task only (the SAM task's stream is opened but never drawn), 4 images a step.
ONE_STAGE = "[{name: probe, steps: 9, tasks: [clip], train: [clip_head], lr: 3.0e-3}]"


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    whole = _encoded(Image.fromarray(noise), "JPEG")
    return whole[: len(whole) // 2]


# Nine good images and three corrupt files (zero bytes, a truncated JPEG, a text file named
# .png), in the order a folder sorts them and a shard holds them.
FILES: dict[str, bytes] = {}
for _i in range(9):
    FILES[f"img{_i:02d}.png"] = _encoded(Image.new("RGB", (40, 30), (25 * _i, 90, 160)))
FILES["img01b.jpg"] = b""
FILES["img04b.jpg"] = _truncated_jpeg()
FILES["img07b.png"] = b"this is a text file, not a png"
CORRUPT = ("img01b.jpg", "img04b.jpg", "img07b.png")


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _shard(path: Path, files: dict[str, bytes]) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for name in sorted(files):
            stem, suffix = name.rsplit(".", 1)
            sink.write({"__key__": stem, suffix: files[name]})
    return path


def _data(kind: str, where: str) -> str:
    key = "root" if kind == "image_folder" else "urls"
    return f"{{type: {kind}, params: {{{key}: '{where}'}}}}"


def _train(args: list[str], out: Path, *extra: str) -> int:
    return main(["run", *args, "--output", str(out), *extra])


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _clip_on(args: list[str], kind: str, where: Path, bound: float) -> list[str]:
    return [
        *args,
        "--set", f"tasks.clip.data={_data(kind, str(where))}",
        "--set", f"stages={ONE_STAGE}",
        "--set", f"data.max_skip_fraction={bound}",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["image_folder", "webdataset"])
def test_corrupt_files_are_skipped_and_logged_once(kind, tiny_recipe_args, tmp_path) -> None:
    if kind == "image_folder":
        where = _folder(tmp_path / "images", FILES)
        workers = ["--set", "tasks.clip.num_workers=2"]  # the records come from the workers
    else:
        where, workers = _shard(tmp_path / "shard.tar", FILES), []
    args = _clip_on(tiny_recipe_args, kind, where, bound=0.5)
    assert _train([*args, *workers], tmp_path / "run") == 0
    logged = _read(tmp_path / "run" / "skipped.jsonl")
    # 36 samples drawn over 9 steps, three or four passes over the data: each file once
    assert sorted(Path(r["path"].split(":")[-1]).stem for r in logged) == [
        Path(c).stem for c in CORRUPT
    ]
    assert all(r["task"] == "clip" and r["reason"] and r["step"] >= 1 for r in logged)
    reasons = " ".join(r["reason"] for r in logged)
    assert "truncated" in reasons and "cannot identify" in reasons
    counts = [m.get("skipped/clip", 0) for m in _read(tmp_path / "run" / "metrics.jsonl")]
    assert len(counts) == 9 and counts == sorted(counts)
    if kind == "webdataset":
        # 3 passes of 9 good samples, batches of 4, 4 and 1 with one skip riding in each
        assert counts == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    else:
        assert counts[-1] >= 9  # 3 passes; a substitute may be a broken file too


def test_too_many_skips_stop_the_run_with_the_bound_named(tiny_recipe_args, tmp_path, capsys):
    where = _folder(tmp_path / "images", FILES)
    args = _clip_on(tiny_recipe_args, "image_folder", where, bound=0.1)
    assert _train(args, tmp_path / "run") == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "Traceback" not in err
    assert "task 'clip':" in err and "could not be decoded" in err
    assert "data.max_skip_fraction (10.0%)" in err and "skipped.jsonl" in err
    # judged after one pass (12 files, 3 steps of 4): at least 3 of 12 = 25%
    assert len(_read(tmp_path / "run" / "metrics.jsonl")) < 9
    assert len(_read(tmp_path / "run" / "skipped.jsonl")) == 3


def test_resume_keeps_the_counts(tiny_recipe_args, tmp_path) -> None:
    shard = _shard(tmp_path / "shard.tar", FILES)
    args = _clip_on(tiny_recipe_args, "webdataset", shard, bound=0.5)
    args += ["--set", "checkpointing.every=2"]
    assert _train(args, tmp_path / "straight") == 0
    assert _train(args, tmp_path / "resumed", "--max-steps", "5") == 0
    assert _train(args, tmp_path / "resumed", "--resume") == 0
    straight = _read(tmp_path / "straight" / "metrics.jsonl")
    resumed = _read(tmp_path / "resumed" / "metrics.jsonl")
    assert [m.get("skipped/clip") for m in resumed] == [m.get("skipped/clip") for m in straight]
    assert _read(tmp_path / "resumed" / "skipped.jsonl") == _read(
        tmp_path / "straight" / "skipped.jsonl"
    )


def _odd_images() -> dict[str, bytes]:
    sixteen = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    return {
        "one_pixel.png": _encoded(Image.new("RGB", (1, 1), (200, 30, 30))),
        "sixteen_bit.png": _encoded(Image.fromarray(sixteen)),
        "rgba.png": _encoded(Image.new("RGBA", (20, 30), (10, 200, 10, 90))),
        "grey.png": _encoded(Image.new("L", (30, 20), 128)),
        "palette.png": _encoded(Image.new("RGB", (24, 24), (200, 10, 10)).convert("P")),
        "wide_strip.png": _encoded(Image.new("RGB", (3000, 10), (5, 60, 70))),
        "tall_strip.jpg": _encoded(Image.new("RGB", (10, 3000), (90, 6, 7)), "JPEG"),
    }


@pytest.mark.parametrize("kind", ["image_folder", "webdataset"])
def test_valid_odd_images_train(kind, tiny_recipe_args, tmp_path) -> None:
    odd = _odd_images()
    if kind == "image_folder":
        where = _folder(tmp_path / "odd", odd)
    else:
        where = _shard(tmp_path / "odd.tar", odd)
    data = _data(kind, str(where))
    args = [
        *tiny_recipe_args,
        # the CLIP task crops (shortest side), the SAM task pads (longest side), both at 2 sizes
        "--set", f"tasks.clip.data={data}",
        "--set", f"tasks.sam.data={data}",
        "--set", "tasks.sam.resolution=[64, 48]",
        "--set", "stages.0.steps=2",
        "--set", "stages.1.steps=4",
        "--set", "data.max_skip_fraction=0",  # any skip would stop the run
    ]  # fmt: skip
    assert _train(args, tmp_path / "run") == 0
    metrics = _read(tmp_path / "run" / "metrics.jsonl")
    assert len(metrics) == 6 and not (tmp_path / "run" / "skipped.jsonl").exists()
    assert all(math.isfinite(m[k]) for m in metrics for k in m if k.startswith("loss/"))


class _Stream:
    """What the ledger reads of a training stream: samples read and skipped since last time."""

    def __init__(self, length: int | None):
        self.length, self.pending = length, (0, [])

    def feed(self, read: int, paths: list[str]) -> None:
        self.pending = (read, [{"path": p, "reason": "broken"} for p in paths])

    def take_skips(self):
        taken, self.pending = self.pending, (0, [])
        return taken


def _ledger(tmp_path: Path, bound: float, stream: _Stream, saved=None) -> SkipLedger:
    tmp_path.mkdir(exist_ok=True)
    folder = RunFolder(tmp_path, recipe_yaml="")
    lengths = {"t": stream.length}
    return SkipLedger(bound=bound, saved=saved, lengths=lengths, folder=folder, world=World())


def test_the_share_is_judged_after_one_pass_or_ten_over_the_bound_reads(tmp_path) -> None:
    stream = _Stream(length=50)
    ledger = _ledger(tmp_path, 0.01, stream)
    stream.feed(10, ["a.jpg"])  # 10% after 10 reads: too early to judge
    assert ledger.update({"t": stream}, step=1) == {"skipped/t": 1}
    stream.feed(30, ["a.jpg"])  # seen again: counted, not logged again
    assert ledger.update({"t": stream}, step=2) == {"skipped/t": 2}
    assert [r["path"] for r in RunFolder(tmp_path, recipe_yaml="").logged_skips()] == ["a.jpg"]
    stream.feed(10, [])  # one pass read (50), 2 skipped = 4% > 1%
    with pytest.raises(SkippedSamplesError, match=r"task 't': 2 of the 50 samples .*\(4\.0%\)"):
        ledger.update({"t": stream}, step=3)
    unbounded = _Stream(length=None)  # a stream without a length: judged after 10 / 0.5 reads
    ledger = _ledger(tmp_path / "b", 0.5, unbounded)
    unbounded.feed(19, [f"{i}.png" for i in range(12)])
    ledger.update({"t": unbounded}, step=1)
    unbounded.feed(1, [])
    with pytest.raises(SkippedSamplesError, match=r"12 of the 20 .*\(60\.0%\)"):
        ledger.update({"t": unbounded}, step=2)


def test_a_bound_of_zero_stops_at_the_first_skip_and_old_checkpoints_count_none(tmp_path):
    stream = _Stream(length=1000)
    old = TrainState(**{"global_step": 4, "streams": {"t": {"epoch": 0, "offset": 8}}})
    ledger = _ledger(tmp_path, 0.0, stream, saved=old.skips)
    assert ledger.state_dict() == {"t": {"read": 0, "skipped": 0}}
    stream.feed(100, [])
    assert ledger.update({"t": stream}, step=5) == {}
    stream.feed(1, ["x.png"])
    with pytest.raises(SkippedSamplesError, match=r"1 of the 101 .*\(0\.0%\) allows"):
        ledger.update({"t": stream}, step=6)
    resumed = _ledger(tmp_path, 0.5, stream, saved={"t": {"read": 7, "skipped": 2}})
    assert resumed.state_dict() == {"t": {"read": 7, "skipped": 2}}


def test_the_progress_bar_shows_the_skips() -> None:
    metrics = {"stage": "probe", "loss/clip": 0.5, "skipped/clip": 3}
    assert _describe(metrics).endswith("clip=0.5000 skipped clip=3")


@pytest.mark.parametrize("kind", ["image_folder", "webdataset"])
def test_data_with_nothing_decodable_is_one_clear_error(kind, tmp_path) -> None:
    broken = {name: FILES[name] for name in CORRUPT}
    if kind == "image_folder":
        dataset = ImageFolderDataset.build(
            ImageFolderDataset.Params(root=_folder(tmp_path / "f", broken)),
            resolution=8, resize="crop", seed=0,
        )  # fmt: skip
        expected = r"task 'clip': image_folder: none of its 3 samples can be decoded, e\.g\. '"
    else:
        dataset = WebDatasetShards.build(
            WebDatasetShards.Params(urls=str(_shard(tmp_path / "s.tar", broken))),
            resolution=8, resize="crop", seed=0,
        )  # fmt: skip
        expected = r"task 'clip': a whole pass over its data gave no sample"
    stream = BatchStream(dataset, batch_size=2, seed=0, num_workers=1, name="clip")
    with pytest.raises(SkippedSamplesError, match=expected) as caught:
        stream.next()
    assert "Traceback" not in str(caught.value)  # the worker's traceback is not the message
