"""Weights named by a hub name or tag instead of a local path, resolved to local files through the
libraries' own download and cache code.

A plugin's params name weights (``pretrained: datacomp_xl_s13b_b90k``, ``hf-hub:org/name``,
``vit_b``); the plugin maps the name to a :class:`WeightsName` and :func:`resolve` turns it into
a local path. Three kinds of source:

- :class:`HubFile`: one weights file of a Hugging Face Hub repository (open_clip and timm tags,
  ``hf-hub:org/name[@revision]``), fetched with huggingface_hub's ``hf_hub_download``;
- :class:`HubSnapshot`: a repository's ``save_pretrained`` folder (transformers), fetched with
  ``snapshot_download``;
- :class:`ReleaseFile`: a file published at a URL with its SHA-256 (SAM's releases), fetched with
  torch's ``download_url_to_file`` into ``$HF_HOME/<folder>``.

Names already in the local cache are used as they are, without asking the network (pin a commit
with ``@<revision>`` to be sure what a branch name means). ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) turns every download off, the release files' too; ``HF_HOME`` and
``HF_HUB_CACHE`` place the cache. huggingface_hub reads these variables once, when it is
imported; here they are read at each call, so a process that sets them later is honoured too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.constants import ENV_VARS_TRUE_VALUES
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id
from pydantic import StringConstraints

from mergekit_vision.errors import WeightsFileError, WeightsNotFoundError

HF_HUB_PREFIX = "hf-hub:"  # open_clip's and timm's prefix for a model on the Hub
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
"""A SHA-256 digest as 64 hexadecimal digits (a params field type)."""

_HASH_CHUNK = 1 << 24
_FETCH = "run `vmerge fetch RECIPE` where there is internet and bring its cache folder here"


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = os.environ.get("HF_HOME") or str(Path(cache) / "huggingface")
    return Path(os.path.expandvars(home)).expanduser()


def hub_cache() -> Path:
    """huggingface_hub's cache folder: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else hf_home() / "hub"


def downloads_off() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) turns downloads off."""
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.strip().upper() in ENV_VARS_TRUE_VALUES for flag in flags)


def parse_hf_hub(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@revision]`` -> ``(repo id, revision or None)``.

    Raises:
        ValueError: the name does not have that form.
    """
    if not name.startswith(HF_HUB_PREFIX):
        raise ValueError(f"{name!r} is not a Hub name (hf-hub:org/name[@revision])")
    repo_id, _, revision = name.removeprefix(HF_HUB_PREFIX).partition("@")
    check_repo_id(repo_id)
    return repo_id, revision or None


def check_repo_id(repo_id: str) -> None:
    """Raise ``ValueError`` unless ``repo_id`` is a Hub repository id (huggingface_hub's rule)."""
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"{repo_id!r} is not a Hub repository id (org/name): {error}") from None


@dataclass(frozen=True)
class HubFile:
    """A weights file of a Hub repository: the first of ``filenames`` the repository has (e.g.
    safetensors before a pickle), with ``companions`` (configs) fetched beside it when present."""

    repo_id: str
    filenames: tuple[str, ...]
    revision: str | None = None
    companions: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return hub_cache() / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    def describe(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{' or '.join(self.filenames)} of Hub repository {self.repo_id}{at}"

    def cached(self) -> Path | None:
        for filename in self.filenames:
            found = try_to_load_from_cache(
                self.repo_id, filename, cache_dir=hub_cache(), revision=self.revision
            )
            if isinstance(found, str):
                return Path(found)
        return None

    def download(self) -> Path:
        for filename in self.filenames:
            try:
                path = self._get(filename)
            except LocalEntryNotFoundError:  # no connection: a subclass of the next one
                raise
            except EntryNotFoundError:
                continue
            for companion in self.companions:
                try:
                    self._get(companion)
                except EntryNotFoundError:
                    pass  # optional: the weights are what counts
            return path
        raise FileNotFoundError(f"the repository has none of {', '.join(self.filenames)}")

    def _get(self, filename: str) -> Path:
        return Path(
            hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=hub_cache())
        )


@dataclass(frozen=True)
class HubSnapshot:
    """A Hub repository's ``save_pretrained`` folder (config, weights, processor, tokenizer):
    safetensors weights, or the repository's pickles when it has no safetensors."""

    repo_id: str
    revision: str | None = None
    patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
    fallback: tuple[str, ...] = ("*.bin",)
    required: str = "config.json"

    @property
    def folder(self) -> Path:
        return hub_cache() / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    def describe(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"Hub repository {self.repo_id}{at}"

    def cached(self) -> Path | None:
        try:
            folder = Path(self._snapshot(self.patterns, local_files_only=True))
        except LocalEntryNotFoundError:  # absent, or a snapshot known to be incomplete
            return None
        weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
        return folder if (folder / self.required).is_file() and weights else None

    def download(self) -> Path:
        folder = Path(self._snapshot(self.patterns))
        if not any(folder.glob("*.safetensors")):
            self._snapshot(self.fallback)
        return folder

    def _snapshot(self, patterns: tuple[str, ...], *, local_files_only: bool = False) -> str:
        return snapshot_download(
            self.repo_id,
            revision=self.revision,
            cache_dir=hub_cache(),
            allow_patterns=list(patterns),
            local_files_only=local_files_only,
        )


@dataclass(frozen=True)
class ReleaseFile:
    """A file published at ``url`` (its name kept), cached in ``$HF_HOME/<folder_name>``."""

    url: str
    folder_name: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def folder(self) -> Path:
        return hf_home() / self.folder_name

    def describe(self) -> str:
        return f"{self.filename} from {self.url}"

    def cached(self) -> Path | None:
        path = self.folder / self.filename
        return path if path.is_file() else None

    def download(self, *, sha256: str | None, what: str) -> Path:
        from torch.hub import download_url_to_file

        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / self.filename
        partial = target.with_name(target.name + ".partial")
        download_url_to_file(self.url, str(partial), progress=True)
        try:  # checked before it takes the official name: a bad download never looks cached
            if sha256 is not None:
                verify_sha256(partial, sha256, what=what, remedy="download it again")
        except WeightsFileError:
            partial.unlink()
            raise
        return partial.replace(target)


@dataclass(frozen=True)
class WeightsName:
    """Weights a plugin's params name by hub name or tag.

    Args:
        field: the params field that holds the name (``"pretrained"``).
        name: the name as written (``"datacomp_xl_s13b_b90k"``), for messages.
        what: what the weights are (``"open_clip ViT-L-14 weights"``), for messages.
        source: where the name points.
        sha256: the file's expected SHA-256, checked before the file is handed out.
        where: the recipe field (``"teachers.clip.params.pretrained"``) when known.
    """

    field: str
    name: str
    what: str
    source: HubFile | HubSnapshot | ReleaseFile
    sha256: str | None = None
    where: str = ""

    @property
    def at(self) -> str:
        return self.where or f"params.{self.field}"

    def not_found(self, why: str, remedy: str) -> WeightsNotFoundError:
        """``"{what} {name} ({source}) {why}. To fix: {remedy}"`` at :attr:`at`."""
        detail = f"{self.what} {self.name!r} ({self.source.describe()}) {why}. To fix: {remedy}"
        return WeightsNotFoundError(self.at, detail)

    def not_cached(self, why: str, remedy: str) -> WeightsNotFoundError:
        """The error for these weights missing from the cache folder, ``why`` they are."""
        return self.not_found(f"is not in the local cache {self.source.folder}{why}", remedy)

    def uncached_error(self) -> WeightsNotFoundError:
        """The error for these weights missing from the cache while downloads are off."""
        return self.not_cached(
            " and downloads are off (HF_HUB_OFFLINE=1)", f"{_FETCH}, or unset HF_HUB_OFFLINE"
        )


def cached(weights: WeightsName) -> Path | None:
    """The local file (a folder for a snapshot) of ``weights`` if the cache has it; no network."""
    return weights.source.cached()


def resolve(weights: WeightsName) -> Path:
    """The local file (a folder for a snapshot) ``weights`` names: from the cache, else downloaded
    with the library's progress bar unless downloads are off. A file with an expected SHA-256 is
    checked before it is returned, so a damaged or substituted file is never loaded.

    Raises:
        WeightsNotFoundError: not cached and downloads are off or impossible, or not on the Hub.
        WeightsFileError: the file's SHA-256 is not the expected one.
    """
    path = weights.source.cached()
    if path is None:
        path = _download(weights)
    if weights.sha256 is not None and path.is_file():
        remedy = f"delete {path} and fetch it again (`vmerge fetch RECIPE`)"
        verify_sha256(path, weights.sha256, what=f"{weights.what} {weights.name!r}", remedy=remedy)
    return path


def snapshot_names(
    pretrained: str | None, revision: str | None, what: str
) -> dict[str, WeightsName]:
    """``{"pretrained": name}`` for weights named as a repository snapshot (a transformers
    ``save_pretrained`` folder on the Hub), or nothing without a name."""
    if pretrained is None:
        return {}
    source = HubSnapshot(pretrained, revision)
    return {"pretrained": WeightsName("pretrained", pretrained, what, source)}


def snapshot_config_fields(
    names: dict[str, WeightsName], field: str, folder: Path | None
) -> dict[str, Path | None]:
    """The file standing for a ``save_pretrained`` folder's weights (its ``config.json``): the
    cached snapshot's when named, else the local ``folder`` of recipe field ``field``."""
    if names:
        cached_folder = cached(names["pretrained"])
        return {"pretrained": None if cached_folder is None else cached_folder / "config.json"}
    return {field: None if folder is None else folder / "config.json"}


def _download(weights: WeightsName) -> Path:
    if downloads_off():
        raise weights.uncached_error()
    source = weights.source
    try:
        if isinstance(source, ReleaseFile):
            return source.download(sha256=weights.sha256, what=f"{weights.what} {weights.name!r}")
        return source.download()
    except LocalEntryNotFoundError as error:
        raise weights.not_cached(
            f" and the Hub cannot be reached ({_first_line(error)})",
            f"check the connection, or {_FETCH}",
        ) from error
    except OSError as error:  # the Hub's HTTP errors, a missing file, a failed download
        if isinstance(source, ReleaseFile):
            remedy = (
                f"check the connection, or download {source.url} yourself and give the file as "
                f"checkpoint, or {_FETCH}"
            )
        else:
            remedy = "check the name (and revision), or give a local checkpoint path instead"
        raise weights.not_found(f"cannot be downloaded: {_first_line(error)}", remedy) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# (path, inode, size, mtime) -> digest: a run checks a file when fetching and when building
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The SHA-256 of ``path`` (hashed once per process while the file is unchanged)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def verify_sha256(path: Path | str, expected: str, *, what: str, remedy: str) -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected``; nothing is read as weights before.

    Raises:
        FileNotFoundError: ``"{what} not found: {path}"``.
        WeightsFileError: the digests differ (both are in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise WeightsFileError(
            path,
            problem=f"{what} {path} has SHA-256 {actual}, not the expected {expected.lower()}: "
            "it is damaged (a download cut short) or another file; nothing was loaded",
            expected=f"the file whose SHA-256 is {expected.lower()}",
            remedy=remedy,
        )
