"""The public API of ``mergekit_vision/__init__.py``, and the README's example of it, run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mergekit_vision as mv

ROOT = Path(__file__).resolve().parents[2]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_import_is_light():
    code = "import sys, mergekit_vision; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_create_validates_params_and_build_arguments():
    loss = mv.create("losses", "contrastive", temperature=0.05)
    assert loss.temperature == pytest.approx(0.05)
    with pytest.raises(TypeError, match="has no parameter 'tempreature'"):
        mv.create("losses", "contrastive", tempreature=0.05)
    with pytest.raises(ValueError, match="unknown plugin kind 'teacher'; kinds: teachers"):
        mv.create("teacher", "sam")
    replay = mv.create("replay", "fixed_ratio", batch_sizes={"clip": 2, "sam": 1})
    assert [d.task for d in replay.draws(step=0)] == ["clip", "sam"]


def test_readme_python_example_runs(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    script = tmp_path / "example.py"
    script.write_text(readme_python_example())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "api-demo-export" / "model.safetensors").is_file()
    assert "ViTDetStudent" in done.stdout
