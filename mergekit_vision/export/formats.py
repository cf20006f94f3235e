"""``vmerge export`` as a library call: a run folder in, one format's folder out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mergekit_vision.export import ExportError
from mergekit_vision.export.card import export_safetensors
from mergekit_vision.export.hf import export_hf
from mergekit_vision.export.loading import LoadedRun, load_run
from mergekit_vision.export.onnx import export_onnx
from mergekit_vision.export.open_clip import export_open_clip
from mergekit_vision.export.sam import export_sam

FORMATS: dict[str, Callable[[LoadedRun, Path], list[Path]]] = {
    "sam": export_sam,
    "open_clip": export_open_clip,
    "safetensors": export_safetensors,
    "hf": export_hf,
    "onnx": export_onnx,
}


def export_run(run_dir: str | Path, *, format: str, output: str | Path | None = None) -> list[Path]:
    """Export ``run_dir``'s last checkpoint as ``format`` into ``output``
    (default ``<run_dir>/export/<format>``); returns the files written."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    run = load_run(Path(run_dir))
    return FORMATS[format](run, Path(output or Path(run_dir) / "export" / format))
