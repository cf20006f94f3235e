"""A real local Hub cache for tests: huggingface_hub's cache layout, written file by file as
``hf_hub_download`` leaves it, and the environment of a machine without internet that uses it.

Layout (huggingface_hub's ``file_download`` docstring)::

    $HF_HOME/hub/models--org--name/
        blobs/<sha256 of the file>
        snapshots/<commit>/<file> -> ../../blobs/<sha256>
        refs/<branch or tag>             (holds the commit)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def offline_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Point ``HF_HOME`` at ``root``, turn downloads off (``HF_HUB_OFFLINE=1``); the hub cache."""
    monkeypatch.setenv("HF_HOME", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return root / "hub"


def write_hub_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes | Path],
    *,
    ref: str | None = "main",
    commit: str | None = None,
) -> Path:
    """Put ``files`` (repo path -> bytes or a file to copy) into ``cache`` as one commit of
    ``repo_id``, with ``ref`` pointing at it; the snapshot folder."""
    contents = {name: c.read_bytes() if isinstance(c, Path) else c for name, c in files.items()}
    if commit is None:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(contents):
            digest.update(name.encode() + contents[name])
        commit = digest.hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in contents.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes | Path]:
    """Every file under ``folder`` by its relative path (a ``save_pretrained`` folder)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
