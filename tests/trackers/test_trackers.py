"""Experiment trackers on a tiny run: each tracker's own files, read back with its own reader,
hold the numbers of ``metrics.jsonl`` at the same steps, the resolved recipe, and the merged
model's evaluation at the last step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.engine.run_folder import RunFolder, read_metrics
from mergekit_vision.recipe.specs import TrackerSpec
from mergekit_vision.trackers.group import open_trackers

SCALARS = ("loss/clip", "loss/sam", "lr", "weight/sam")
EVAL_KEY = "eval/merged/zeroshot_cls_top1"
# What a user's shell may set that would send these runs elsewhere.
TRACKER_ENV = (
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
)


def short(args: list[str]) -> list[str]:
    return [*args, "--set", "stages.0.steps=2", "--set", "stages.1.steps=2"]


def expected(run: Path, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in read_metrics(run) if m.get(key) is not None]


def same(logged: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """The same steps, the same values (TensorBoard keeps float32)."""
    return [s for s, _ in logged] == [s for s, _ in want] and [v for _, v in logged] == (
        pytest.approx([v for _, v in want], rel=1e-6)
    )


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_checkpoints) -> tuple[Path, dict]:
    """Two stages of two steps with every tracker, then zero-shot classification on toy data."""
    data = tmp_path_factory.mktemp("toy_classes")
    export_all(data, config=ToyWorldConfig(image_size=64), num_samples=8, seed=3, num_per_class=1)
    run = tmp_path_factory.mktemp("tracked") / "run"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sam_clip.yaml"
    args = [
        str(recipe), "--output", str(run),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
        "--set", "logging.trackers=[tensorboard, wandb, mlflow]",
        "--set", "eval.resolution=64", "--set", "eval.calibration_samples=2",
        "--set", "eval.pictures=0", "--set", "eval.teachers=[clip]",
        "--set", f"eval.classification={{type: image_classes, "
                 f"params: {{root: {data}/image_classes}}}}",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        for name in TRACKER_ENV:
            env.delenv(name, raising=False)
        assert main(["run", *short(args)]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    return run, evaluation["models"]["merged"]


def test_tensorboard_events_hold_the_metrics_lines(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, merged = tracked_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for key in SCALARS:
        assert same([(e.step, e.value) for e in events.Scalars(key)], expected(run, key)), key
    assert [(e.step, e.value) for e in events.Scalars(EVAL_KEY)] == [
        (4, pytest.approx(merged["zeroshot_cls_top1"], rel=1e-6))
    ]
    text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: tiny_sam_clip" in text and "weight_decay: 0.0" in text
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["name"].string_value == "tiny_sam_clip"
    assert hparams["optimizer.weight_decay"].number_value == 0.0


def test_wandb_offline_run_holds_the_metrics_lines(tracked_run):
    run, merged = tracked_run
    (folder,) = (run / "wandb").glob("offline-run-*")  # offline, inside the run folder
    records = wandb_records(folder)
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if "history" in r}
    for key in SCALARS:
        logged = [(step, item[key]) for step, item in sorted(history.items()) if key in item]
        assert same(logged, expected(run, key)), key
    assert history[4][EVAL_KEY] == pytest.approx(merged["zeroshot_cls_top1"])
    (start,) = [r["run"] for r in records if r.get("type") == "run"]
    assert start["display_name"] == run.name
    config = start["config"]["update"]
    assert config["name"] == "tiny_sam_clip"
    assert config["optimizer"]["weight_decay"] == 0.0
    assert config["logging"]["trackers"][1]["type"] == "wandb"


def wandb_records(folder: Path) -> list[dict]:
    """The records of an offline run's ``.wandb`` log, as W&B's own inspector prints them."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_mlflow_file_store_holds_the_metrics_lines(tracked_run, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, merged = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to read a file store
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny_sam_clip")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    for key in SCALARS:
        history = client.get_metric_history(found.info.run_id, key)
        assert same(sorted((m.step, m.value) for m in history), expected(run, key)), key
    final = client.get_metric_history(found.info.run_id, EVAL_KEY)
    assert [(m.step, m.value) for m in final] == [(4, pytest.approx(merged["zeroshot_cls_top1"]))]
    assert found.data.params["optimizer.weight_decay"] == "0.0"
    assert found.data.params["name"] == "tiny_sam_clip"
    recipe = client.download_artifacts(found.info.run_id, "recipe.resolved.yaml", str(tmp_path))
    assert Path(recipe).read_text() == (run / "recipe.resolved.yaml").read_text()


def test_a_resumed_run_reads_as_one_in_tensorboard(tiny_recipe_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = [
        *short(tiny_recipe_args),
        "--output",
        str(run),
        "--set",
        "logging.trackers=[tensorboard]",
    ]
    assert main(["run", *args, "--max-steps", "3"]) == 0
    assert main(["run", *args, "--resume"]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss/clip")]
    assert same(logged, expected(run, "loss/clip"))
    assert [s for s, _ in logged] == [1, 2, 3, 4]


def test_an_unregistered_tracker_is_the_registrys_error(tiny_recipe_args, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*tiny_recipe_args, "--output", str(out), "--set", "logging.trackers=[tensorboard, x]"]
    assert main(["run", *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "logging.trackers.1" in err
    assert "unknown trackers plugin 'x'; valid names: mlflow, tensorboard, wandb" in err
    assert not out.exists()


def test_a_missing_library_names_its_extra_before_training(
    tiny_recipe_args, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    out = tmp_path / "run"
    argv = [*tiny_recipe_args, "--output", str(out), "--set", "logging.trackers=[wandb]"]
    assert main(["run", *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "logging.trackers.0 (wandb)" in err
    assert "pip install 'mergekit-vision[wandb]'" in err
    assert not (out / "metrics.jsonl").exists()


def test_only_the_main_process_writes_to_trackers(tmp_path):
    """Ranks other than 0 build no trackers and their run folder hands nothing on."""
    specs = [TrackerSpec.model_validate("tensorboard")]
    assert open_trackers(specs, run_dir=tmp_path, enabled=False).trackers == []
    trackers = open_trackers(specs, run_dir=tmp_path)
    recipe_yaml = yaml.safe_dump({"name": "r"})
    with trackers:
        other = RunFolder(tmp_path, recipe_yaml=recipe_yaml, is_main=False, trackers=trackers)
        other.begin(resume=False, model=torch.nn.Linear(1, 1))
        other.log({"step": 1, "loss/a": 0.5})
    assert not (tmp_path / "tensorboard").exists() and not trackers.started


def test_a_dry_run_checks_the_libraries_but_sends_nothing(tiny_recipe_args, tmp_path):
    out = tmp_path / "dry"
    argv = [*tiny_recipe_args, "--dry-run", "--output", str(out)]
    assert main(["run", *argv, "--set", "logging.trackers=[tensorboard]"]) == 0
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()
