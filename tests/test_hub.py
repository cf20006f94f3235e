"""Weights by name (mergekit_vision/hub.py) against a real local Hub cache the tests write:
offline resolution, the errors that name field, name and cache folder, and SHA-256 checks."""

from __future__ import annotations

import hashlib

import pytest

from mergekit_vision.errors import WeightsFileError, WeightsNotFoundError
from mergekit_vision.hub import (
    HubFile,
    HubSnapshot,
    ReleaseFile,
    WeightsName,
    cached,
    hub_cache,
    parse_hf_hub,
    resolve,
)

from .hub_cache import offline_hub, write_hub_repo

SAFE, PICKLE = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return offline_hub(monkeypatch, tmp_path / "hf")


def named(source, name="hf-hub:tiny-org/clip", sha256=None) -> WeightsName:
    return WeightsName(
        field="pretrained",
        name=name,
        what="test weights",
        source=source,
        sha256=sha256,
        where="teachers.clip.params.pretrained",
    )


def test_hub_file_resolves_offline_preferring_the_first_name_the_repo_has(cache):
    main = write_hub_repo(cache, "tiny-org/clip", {PICKLE: b"pickle", SAFE: b"safe"})
    only_pickle = write_hub_repo(cache, "tiny-org/clip", {PICKLE: b"old"}, ref="v1")
    assert resolve(named(HubFile("tiny-org/clip", (SAFE, PICKLE)))) == main / SAFE
    at_v1 = HubFile("tiny-org/clip", (SAFE, PICKLE), revision="v1")
    assert resolve(named(at_v1)).read_bytes() == b"old"
    assert resolve(named(at_v1)) == only_pickle / PICKLE
    by_commit = HubFile("tiny-org/clip", (SAFE,), revision=main.name)
    assert resolve(named(by_commit)) == main / SAFE


def test_a_name_missing_offline_names_the_field_the_name_and_the_cache_folder(cache):
    write_hub_repo(cache, "tiny-org/clip", {PICKLE: b"x"})
    missing = named(HubFile("tiny-org/other", (SAFE, PICKLE)), name="hf-hub:tiny-org/other")
    assert cached(missing) is None
    with pytest.raises(WeightsNotFoundError) as error:
        resolve(missing)
    message = str(error.value)
    assert message.startswith("teachers.clip.params.pretrained: ")
    assert "'hf-hub:tiny-org/other'" in message
    assert str(cache / "models--tiny-org--other") in message
    assert "HF_HUB_OFFLINE=1" in message and "vmerge fetch" in message
    # a file the repository lacks is missing too, not another file
    no_safe = named(HubFile("tiny-org/clip", (SAFE,)))
    with pytest.raises(WeightsNotFoundError, match="is not in the local cache"):
        resolve(no_safe)


def test_cache_folders_follow_hf_home_and_hf_hub_cache(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "home")
    assert hub_cache() == tmp_path / "home" / "hub"
    release = ReleaseFile("https://example.org/files/w.pth", folder_name="segment_anything")
    assert release.folder == tmp_path / "home" / "segment_anything"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache() == tmp_path / "elsewhere"
    assert HubFile("a/b", ("w",)).folder == tmp_path / "elsewhere" / "models--a--b"


def test_a_snapshot_is_cached_only_with_its_config_and_weights(cache):
    write_hub_repo(cache, "tiny-org/vit", {"config.json": b"{}"})
    assert cached(named(HubSnapshot("tiny-org/vit"))) is None
    folder = write_hub_repo(
        cache, "tiny-org/vit", {"config.json": b"{}", "model.safetensors": b"w"}, ref="v2"
    )
    assert resolve(named(HubSnapshot("tiny-org/vit", revision="v2"))) == folder


def test_release_file_is_downloaded_with_torch_hub_and_its_sha256_checked(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "hf")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the "server" is a local file: file:// URLs
    served = tmp_path / "server" / "weights_abc123.pth"
    served.parent.mkdir()
    served.write_bytes(b"the published bytes")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    release = ReleaseFile(served.as_uri(), folder_name="segment_anything")

    wrong = named(release, name="vit_b", sha256="0" * 64)
    with pytest.raises(WeightsFileError, match=f"has SHA-256 {digest}, not the expected 0000"):
        resolve(wrong)
    folder = tmp_path / "hf" / "segment_anything"
    assert list(folder.iterdir()) == []  # a bad download never looks cached

    path = resolve(named(release, name="vit_b", sha256=digest))
    assert path == folder / "weights_abc123.pth"
    assert path.read_bytes() == b"the published bytes"


def test_a_cached_file_with_another_sha256_is_refused_before_it_is_read(cache, tmp_path):
    release = ReleaseFile("https://example.org/files/w.pth", folder_name="segment_anything")
    release.folder.mkdir(parents=True)
    (release.folder / "w.pth").write_bytes(b"not the release")
    expected = hashlib.sha256(b"the release").hexdigest()
    with pytest.raises(WeightsFileError) as error:
        resolve(named(release, name="vit_b", sha256=expected))
    message = str(error.value)
    assert expected in message and "nothing was loaded" in message
    assert str(release.folder / "w.pth") in message and "delete" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf-hub:org/name", ("org/name", None)),
        ("hf-hub:org/name@v1.0", ("org/name", "v1.0")),
        ("hf-hub:bert-base-uncased", ("bert-base-uncased", None)),
    ],
)
def test_hf_hub_names_parse(name, expected):
    assert parse_hf_hub(name) == expected


@pytest.mark.parametrize("name", ["org/name", "hf-hub:org/name/extra", "hf-hub:org--x/name"])
def test_malformed_hf_hub_names_are_refused(name):
    with pytest.raises(ValueError, match="hf-hub:org/name|not a Hub repository id"):
        parse_hf_hub(name)
