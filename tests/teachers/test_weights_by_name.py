"""Every teacher (and the students) takes its weights by name as well as by path: the names
resolve offline from a real Hub cache the tests write (HF_HOME, HF_HUB_OFFLINE=1), the weights
that come out are the files put in, and a SAM file with another SHA-256 is refused unread."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from mergekit_vision.errors import WeightsFileError, WeightsNotFoundError
from mergekit_vision.sam.releases import SAM_RELEASES
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.teachers.hf import HfParams, HfTeacher
from mergekit_vision.teachers.open_clip import OpenClipParams, OpenClipTeacher
from mergekit_vision.teachers.sam import SamParams, SamTeacher
from mergekit_vision.teachers.timm import TimmParams, TimmTeacher

from ..conftest import TINY_RECIPE
from ..hub_cache import folder_files, offline_hub, sha256_of, write_hub_repo

TINY = yaml.safe_load(TINY_RECIPE.read_text())
SAM_TINY = {k: v for k, v in TINY["teachers"]["sam"]["params"].items() if k != "checkpoint"}
CLIP_CFG = TINY["teachers"]["clip"]["params"]["model_cfg"]
DINO = "vit_small_patch14_dinov2"
DINO_TINY = {"img_size": 56, "depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return offline_hub(monkeypatch, tmp_path / "hf")


def same_weights(module: torch.nn.Module, expected: dict[str, torch.Tensor], prefix="") -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k.removeprefix(prefix)], v) for k, v in expected.items())


def place_release(cache, source, variant="vit_b"):
    target = cache.parent / "segment_anything" / SAM_RELEASES[variant].filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def test_sam_release_name_loads_the_cached_file_after_checking_it(cache, tiny_checkpoints):
    target = place_release(cache, tiny_checkpoints["sam"])
    digest = sha256_of(target)
    params = SamParams(**SAM_TINY, pretrained="vit_b", sha256=digest)
    assert SamTeacher.checkpoint_fields(params) == {"pretrained": target}
    teacher = SamTeacher.build(params)
    assert same_weights(teacher.sam, torch.load(tiny_checkpoints["sam"]))


def test_a_sam_file_with_another_sha256_is_refused_and_nothing_is_loaded(cache, tiny_checkpoints):
    # a SAM state dict that would load into this architecture, in vit_b's place: not the release
    target = place_release(cache, tiny_checkpoints["sam"])
    with pytest.raises(WeightsFileError) as error:
        SamTeacher.build(SamParams(**SAM_TINY, pretrained="vit_b"))
    message = str(error.value)
    assert SAM_RELEASES["vit_b"].sha256 in message and sha256_of(target) in message
    assert str(target) in message and "nothing was loaded" in message
    local = SamParams(**SAM_TINY, checkpoint=tiny_checkpoints["sam"], sha256="ab" * 32)
    with pytest.raises(WeightsFileError, match="not the expected abab"):
        SamTeacher.build(local)


def test_sam_names_must_fit_the_variant():
    with pytest.raises(ValidationError, match="set variant: vit_l"):
        SamParams(variant="vit_b", pretrained="vit_l")
    with pytest.raises(ValidationError, match="not both"):
        SamParams(variant="vit_b", pretrained="vit_b", checkpoint="sam.pth")
    with pytest.raises(ValidationError, match="vit_b"):
        SamParams(pretrained="vit_x")


def test_open_clip_hf_hub_name_brings_its_weights_and_preprocessing(cache, tiny_checkpoints):
    config = {"model_cfg": CLIP_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    files = {
        "open_clip_pytorch_model.bin": tiny_checkpoints["clip"],
        "open_clip_config.json": json.dumps(config).encode(),
    }
    write_hub_repo(cache, "tiny-org/tiny-clip", files)
    params = OpenClipParams(
        model="tiny", model_cfg=CLIP_CFG, pretrained="hf-hub:tiny-org/tiny-clip"
    )
    teacher = OpenClipTeacher.build(params)
    assert teacher.pixel_mean == (0.5, 0.5, 0.5) and teacher.pixel_std == (0.25, 0.25, 0.25)
    assert same_weights(teacher.clip, torch.load(tiny_checkpoints["clip"]))


def test_open_clip_tag_resolves_through_open_clips_table(cache):
    params = OpenClipParams(model="ViT-L-14", pretrained="datacomp_xl_s13b_b90k")
    source = OpenClipTeacher.weight_names(params)["pretrained"].source
    assert source.repo_id == "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"
    assert source.filenames == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    assert params.tag() == "datacomp_xl_s13b_b90k"  # its mean/std and activation check
    assert OpenClipTeacher.checkpoint_fields(params) == {"pretrained": None}
    snapshot = write_hub_repo(cache, source.repo_id, {"open_clip_pytorch_model.bin": b"w"})
    found = OpenClipTeacher.checkpoint_fields(params)["pretrained"]
    assert found == snapshot / "open_clip_pytorch_model.bin"
    with pytest.raises(ValidationError, match="no tag 'nope'.*datacomp_xl_s13b_b90k"):
        OpenClipParams(model="ViT-L-14", pretrained="nope")
    with pytest.raises(ValidationError, match="not both"):
        OpenClipParams(model="ViT-L-14", pretrained="openai", checkpoint="clip.bin")


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(DINO, pretrained=False, init_values=1.0, **DINO_TINY)
    path = tmp_path_factory.mktemp("dino") / "model.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.state_dict()


def test_timm_tag_and_hf_hub_names_load_timms_hub_layout(cache, dino_file):
    path, state = dino_file
    kwargs = {**DINO_TINY, "init_values": 1.0}
    tag = TimmParams(model=DINO, pretrained="lvd142m", model_kwargs=kwargs)
    repo = TimmTeacher.weight_names(tag)["pretrained"].source.repo_id
    assert repo == "timm/vit_small_patch14_dinov2.lvd142m"  # timm's own table
    write_hub_repo(cache, repo, {"model.safetensors": path})
    teacher = TimmTeacher.build(tag)
    assert same_weights(teacher.model, state)
    assert teacher.pixel_mean == pytest.approx((0.485, 0.456, 0.406))  # the tag's config

    config = {"architecture": DINO, "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    files = {"model.safetensors": path, "config.json": json.dumps(config).encode()}
    write_hub_repo(cache, "tiny-org/dino", files)
    by_hub = TimmParams(model=DINO, pretrained="hf-hub:tiny-org/dino", model_kwargs=kwargs)
    teacher = TimmTeacher.build(by_hub)
    assert same_weights(teacher.model, state) and teacher.pixel_mean == (0.5, 0.5, 0.5)

    config["architecture"] = "vit_base_patch16_224"
    files["config.json"] = json.dumps(config).encode()
    write_hub_repo(cache, "tiny-org/other", files)
    other = TimmParams(model=DINO, pretrained="hf-hub:tiny-org/other", model_kwargs=kwargs)
    with pytest.raises(ValueError, match="holds a 'vit_base_patch16_224'"):
        TimmTeacher.build(other)
    with pytest.raises(ValidationError, match="no pretrained tag 'nope'.*lvd142m"):
        TimmParams(model=DINO, pretrained="nope")


def test_hf_repo_id_and_revision_load_the_cached_snapshot(cache, tmp_path):
    torch.manual_seed(0)
    config = Dinov2Config(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
    model = Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "dinov2")
    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (tmp_path / "dinov2" / "preprocessor_config.json").write_text(json.dumps(stats))
    snapshot = write_hub_repo(cache, "tiny-org/dinov2", folder_files(tmp_path / "dinov2"))

    teacher = HfTeacher.build(HfParams(pretrained="tiny-org/dinov2"))
    assert same_weights(teacher.model, model.state_dict())
    assert teacher.pixel_mean == (0.1, 0.2, 0.3)
    pinned = HfParams(pretrained="tiny-org/dinov2", revision=snapshot.name)
    assert HfTeacher.checkpoint_fields(pinned) == {"pretrained": snapshot / "config.json"}
    assert same_weights(HfTeacher.build(pinned).model, model.state_dict())
    with pytest.raises(
        WeightsNotFoundError, match=r"tiny-org/dinov2@v9\) is not in the local cache"
    ):
        HfTeacher.build(HfParams(pretrained="tiny-org/dinov2", revision="v9"))
    with pytest.raises(ValidationError, match="not a Hub repository id"):
        HfParams(pretrained="tiny-org/dinov2/extra")


def test_students_start_from_named_weights(cache, tiny_checkpoints, dino_file):
    target = place_release(cache, tiny_checkpoints["sam"])
    student_params = dict(TINY["student"]["params"], init_from=None)
    vitdet = ViTDetStudent.Params(**student_params, pretrained="vit_b", sha256=sha256_of(target))
    assert ViTDetStudent.weight_names(vitdet)["pretrained"].name == "vit_b"
    student = ViTDetStudent.build(vitdet, teachers={})
    sam = torch.load(tiny_checkpoints["sam"])
    encoder = {k: v for k, v in sam.items() if k.startswith("image_encoder.")}
    assert same_weights(student, encoder, prefix="image_encoder.")

    path, state = dino_file
    write_hub_repo(cache, "tiny-org/dino", {"model.safetensors": path})
    kwargs = {k: v for k, v in DINO_TINY.items() if k != "img_size"}
    timm_vit = TimmViTStudent.Params(
        model=DINO, native_size=56, model_kwargs={**kwargs, "init_values": 1.0},
        pretrained="hf-hub:tiny-org/dino",
    )  # fmt: skip
    student = TimmViTStudent.build(timm_vit, teachers={})
    assert same_weights(student.model, {k: v for k, v in state.items() if "head" not in k})
