"""The transformers teacher on tiny random DINOv2 and SigLIP folders written by ``save_pretrained``:
targets equal the transformers model's own outputs, and SigLIP's text tower serves the zero-shot
evaluation like the open_clip teacher's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Dinov2Config,
    Dinov2Model,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
)

from mergekit_vision.contracts import Teacher, resize_and_normalize
from mergekit_vision.eval.models import ClipTeacherEval
from mergekit_vision.eval.tasks import class_text_embeddings
from mergekit_vision.teachers.hf import HfParams, HfTeacher

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WORDS = ["<pad>", "<unk>", "a", "photo", "of", "red", "blue", "circle", "square", "."]


def _processor(folder: Path, size: int) -> None:
    stats = {"image_mean": list(MEAN), "image_std": list(STD), "size": {"height": size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> tuple[Path, Dinov2Model]:
    torch.manual_seed(0)
    config = Dinov2Config(image_size=28, patch_size=7, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
    model = Dinov2Model(config).eval()
    folder = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(folder)
    _processor(folder, 28)
    return folder, model


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory) -> tuple[Path, SiglipModel]:
    torch.manual_seed(0)
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=8, pad_token_id=0,
                bos_token_id=None, eos_token_id=None)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    folder = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(folder)
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, "<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    _processor(folder, 32)
    return folder, model


def test_registered():
    assert HfTeacher.registry_name == "hf" and issubclass(HfTeacher, Teacher)


def test_dinov2_targets_are_the_models_outputs(dinov2_folder):
    folder, model = dinov2_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    specs = teacher.target_specs()
    assert specs["summary"].shape == ("B", 32) and specs["spatial"].shape == ("B", 32, 4, 4)
    assert "image_embedding" not in specs  # no text tower
    assert teacher.pixel_mean == MEAN and teacher.input_size == 28
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        out = teacher(images, targets=["summary", "spatial"])
        pixels = resize_and_normalize(images, size=28, mean=MEAN, std=STD)
        want = model(pixel_values=pixels)
    torch.testing.assert_close(out["summary"], want.pooler_output)  # the class token
    patches = want.last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(out["spatial"], patches)
    with pytest.raises(ValueError, match="no text tower"):
        teacher.encode_text(["a photo"])


def test_siglip_image_and_text_towers(siglip_folder):
    folder, model = siglip_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    assert set(teacher.target_specs()) == {"summary", "spatial", "image_embedding"}
    assert teacher.component_names() == ["model", "vision", "text"]
    images = torch.rand(2, 3, 32, 32)
    texts = ["a photo of a red circle .", "a blue square"]
    with torch.no_grad():
        out = teacher(images, targets=["image_embedding", "spatial"])
        pixels = resize_and_normalize(images, size=32, mean=MEAN, std=STD)
        want_image = model.get_image_features(pixel_values=pixels)
        ids = torch.tensor([[2, 3, 4, 2, 5, 7, 9, 0], [2, 6, 8, 0, 0, 0, 0, 0]])  # padded to 8
        want_text = model.get_text_features(input_ids=ids)
        embedded = teacher.encode_text(texts)
    want_image = getattr(want_image, "pooler_output", want_image)
    want_text = getattr(want_text, "pooler_output", want_text)
    torch.testing.assert_close(out["image_embedding"], F.normalize(want_image, dim=-1))
    assert out["spatial"].shape == (2, 32, 4, 4)  # SigLIP has no class token: all 16 patches
    torch.testing.assert_close(embedded, F.normalize(want_text, dim=-1))


def test_siglip_at_another_input_size_resamples_its_position_table(siglip_folder):
    folder, model = siglip_folder
    teacher = HfTeacher.build(HfParams(path=folder, image_size=48))
    assert teacher.target_specs()["spatial"].shape == ("B", 32, 6, 6)
    images = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        out = teacher(images, targets=["spatial", "image_embedding"])
        pixels = resize_and_normalize(images, size=48, mean=MEAN, std=STD)
        want = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
    patches = want.last_hidden_state.transpose(1, 2).reshape(1, 32, 6, 6)
    torch.testing.assert_close(out["spatial"], patches)
    assert out["image_embedding"].shape == (1, 32)


def test_siglip_dense_embeddings_are_single_patch_poolings(siglip_folder):
    folder, model = siglip_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    images = torch.rand(2, 3, 32, 32)
    dense = teacher.dense_embeddings(images)
    assert dense.shape == (2, 4, 4, 32)
    with torch.no_grad():
        pixels = resize_and_normalize(images, size=32, mean=MEAN, std=STD)
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        # the pooling head attending to one patch only: attention weight 1 on its value path
        alone = torch.stack([model.vision_model.head(hidden[:, i : i + 1]) for i in (0, 5, 15)], 1)
    torch.testing.assert_close(dense.flatten(1, 2)[:, [0, 5, 15]], F.normalize(alone, dim=-1))


def test_dinov2_has_no_dense_embeddings(dinov2_folder):
    teacher = HfTeacher.build(HfParams(path=dinov2_folder[0]))
    with pytest.raises(NotImplementedError, match="SigLIP attention-pooling head"):
        teacher.dense_embeddings(torch.rand(1, 3, 28, 28))


def test_siglip_serves_the_zero_shot_evaluation(siglip_folder):
    folder, _ = siglip_folder
    clip_like = ClipTeacherEval(HfTeacher.build(HfParams(path=folder)))
    texts = class_text_embeddings(clip_like, ["red circle", "blue square"], ["a photo of a {}"])
    images = clip_like.embed_images(torch.rand(3, 3, 32, 32))
    patches = clip_like.embed_patches(torch.rand(3, 3, 32, 32))
    assert texts.shape == (2, 32) and images.shape == (3, 32)
    assert (patches @ texts.T).shape == (3, 4, 4, 2)  # dense zero-shot labels
    assert torch.allclose(images.norm(dim=-1), torch.ones(3))
    assert (images @ texts.T).shape == (3, 2)


def test_missing_folder_and_statistics_are_refused(tmp_path, dinov2_folder):
    with pytest.raises(ValueError, match="needs 'path'"):
        HfTeacher.build(HfParams())
    folder, model = dinov2_folder
    bare = tmp_path / "bare"
    model.save_pretrained(bare)  # no preprocessor_config.json
    with pytest.raises(ValueError, match="give 'mean' and 'std'"):
        HfTeacher.build(HfParams(path=bare))
    teacher = HfTeacher.build(HfParams(path=bare, mean=(0.5,) * 3, std=(0.5,) * 3, image_size=42))
    assert teacher.target_specs()["spatial"].shape == ("B", 32, 6, 6)
    assert HfTeacher.checkpoint_fields(HfParams(path=bare)) == {"path": bare / "config.json"}
