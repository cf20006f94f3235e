"""SigLIP 2 (NaFlex ``Siglip2Model``) and DINOv3 (``DINOv3ViTModel``) through the ``hf`` teacher, on
tiny random folders written by ``save_pretrained``: targets are the transformers models' own
outputs on what ``Siglip2ImageProcessor`` makes of the same images, and SigLIP 2's text tower
serves zero-shot classification and retrieval."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    DINOv3ViTConfig,
    DINOv3ViTModel,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
)
from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

from mergekit_vision.contracts import resize_and_normalize
from mergekit_vision.eval.measures.retrieval import Retrieval
from mergekit_vision.eval.models import ClipTeacherEval, FeatureTeacherEval, teacher_eval
from mergekit_vision.eval.tasks import class_text_embeddings
from mergekit_vision.teachers.hf import HfParams, HfTeacher

# SigLIP 2's own tokenizer class (Gemma's BPE, lower-cased) over single characters: "a red" is
# a, the word boundary, r, e, d
SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
VOCAB = {**SPECIAL, **{c: 5 + i for i, c in enumerate("\u2581abcdefghijklmnopqrstuvwxyz.")}}
TEXT_LENGTH = 12
HALF = [0.5, 0.5, 0.5]  # SigLIP 2's normalization
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv3's (ImageNet's)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory) -> tuple[Path, Siglip2Model]:
    torch.manual_seed(0)
    text = dict(vocab_size=len(VOCAB), max_position_embeddings=TEXT_LENGTH, pad_token_id=0,
                bos_token_id=2, eos_token_id=1, **TINY)  # fmt: skip
    vision = dict(num_patches=16, patch_size=8, **TINY)  # NaFlex: 4 x 4 patches of 8 px
    model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).eval()
    folder = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(folder)
    Siglip2Tokenizer(vocab=VOCAB, merges=[]).save_pretrained(folder)
    stats = {"image_mean": HALF, "image_std": HALF, "patch_size": 8, "max_num_patches": 16}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))
    return folder, model


@pytest.fixture(scope="module")
def dinov3_folder(tmp_path_factory) -> tuple[Path, DINOv3ViTModel]:
    torch.manual_seed(0)
    config = DINOv3ViTConfig(image_size=32, patch_size=8, num_register_tokens=2, **TINY)
    model = DINOv3ViTModel(config).eval()
    folder = tmp_path_factory.mktemp("dinov3")
    model.save_pretrained(folder)
    stats = {"image_mean": list(MEAN), "image_std": list(STD)}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))
    return folder, model


def _uint8(count: int, side: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(count, 3, side, side, generator=generator) * 255).to(torch.uint8)


def _naflex_inputs(images: torch.Tensor, patches: int) -> dict[str, torch.Tensor]:
    processor = Siglip2ImageProcessor(
        patch_size=8, max_num_patches=patches, image_mean=HALF, image_std=HALF
    )
    return dict(processor(images=list(images), return_tensors="pt"))


@pytest.mark.parametrize("side", [32, 48])
def test_siglip2_targets_are_the_naflex_models_outputs(siglip2_folder, side):
    folder, model = siglip2_folder
    teacher = HfTeacher.build(HfParams(path=folder, image_size=None if side == 32 else side))
    grid = side // 8
    specs = teacher.target_specs()
    assert teacher.input_size == side  # 32: the 16 patches of num_patches, trained square
    assert specs["summary"].shape == ("B", 32) and specs["image_embedding"].shape == ("B", 32)
    assert specs["spatial"].shape == ("B", 32, grid, grid)
    images = _uint8(2, side)
    inputs = _naflex_inputs(images, grid * grid)
    assert inputs["spatial_shapes"].tolist() == [[grid, grid]] * 2  # no resizing by the processor
    with torch.no_grad():
        out = teacher(images.float() / 255, targets=["summary", "spatial", "image_embedding"])
        want = model.vision_model(**inputs)
        embedding = model.get_image_features(**inputs).pooler_output
    torch.testing.assert_close(out["summary"], want.pooler_output)
    patches = want.last_hidden_state.transpose(1, 2).reshape(2, 32, grid, grid)
    torch.testing.assert_close(out["spatial"], patches)
    torch.testing.assert_close(out["image_embedding"], F.normalize(embedding, dim=-1))


def test_siglip2_text_tower_serves_zero_shot_and_retrieval(siglip2_folder):
    folder, model = siglip2_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    clip_like = teacher_eval(teacher)
    assert isinstance(clip_like, ClipTeacherEval)
    assert {"text_image_embedding", "text_dense_embedding"} <= clip_like.capabilities
    embedded = clip_like.embed_texts(["A red", "a red."])
    # lower-cased, left-padded to the text tower's 12 positions
    ids = torch.tensor([[0] * 7 + [6, 5, 23, 10, 9], [0] * 6 + [6, 5, 23, 10, 9, 32]])
    with torch.no_grad():
        want = model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(embedded, F.normalize(want, dim=-1))
    classes = class_text_embeddings(clip_like, ["red circle", "blue square"], ["a photo of a {}"])
    images = clip_like.embed_images(torch.rand(3, 3, 32, 32))
    patches = clip_like.embed_patches(torch.rand(3, 3, 32, 32))
    assert classes.shape == (2, 32) and (images @ classes.T).shape == (3, 2)
    assert (patches @ classes.T).shape == (3, 4, 4, 2)  # dense zero-shot labels
    captioned = [
        {"image": _uint8(1, 32)[0], "captions": ["a red circle", "a photo of a red circle"]},
        {"image": _uint8(1, 32)[0].flip(-1), "captions": ["a blue square"]},
    ]
    evaluation = SimpleNamespace(spec=SimpleNamespace(batch_size=2))
    recall = Retrieval().compute(clip_like, captioned, evaluation)
    assert set(recall) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5)}
    assert recall["image_to_text_R@5"] == 1.0 and 0.0 <= recall["text_to_image_R@1"] <= 1.0


def test_siglip2_dense_embeddings_are_single_patch_poolings(siglip2_folder):
    folder, model = siglip2_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    images = _uint8(2, 32)
    dense = teacher.dense_embeddings(images.float() / 255)
    assert dense.shape == (2, 4, 4, 32)
    with torch.no_grad():
        hidden = model.vision_model(**_naflex_inputs(images, 16)).last_hidden_state
        alone = torch.stack([model.vision_model.head(hidden[:, i : i + 1]) for i in (0, 5, 15)], 1)
    torch.testing.assert_close(dense.flatten(1, 2)[:, [0, 5, 15]], F.normalize(alone, dim=-1))


def test_dinov3_targets_drop_class_and_register_tokens(dinov3_folder):
    folder, model = dinov3_folder
    teacher = HfTeacher.build(HfParams(path=folder))
    specs = teacher.target_specs()
    assert specs == {"summary": specs["summary"], "spatial": specs["spatial"]}  # no text tower
    assert specs["summary"].shape == ("B", 32) and specs["spatial"].shape == ("B", 32, 4, 4)
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        out = teacher(images, targets=["summary", "spatial"])
        want = model(pixel_values=resize_and_normalize(images, size=32, mean=MEAN, std=STD))
    assert want.last_hidden_state.shape[1] == 1 + 2 + 16  # class, 2 registers, 4 x 4 patches
    torch.testing.assert_close(out["summary"], want.pooler_output)  # the class token
    patches = want.last_hidden_state[:, 3:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(out["spatial"], patches)
    features = teacher_eval(teacher)
    assert isinstance(features, FeatureTeacherEval)
    assert features.capabilities == {"summary", "dense"}


def test_random_builds_from_configs():
    siglip2 = dict(
        model_type="siglip2",
        text_config=dict(vocab_size=10, max_position_embeddings=8, **TINY),
        vision_config=dict(num_patches=16, patch_size=8, **TINY),
    )
    dinov3 = dict(model_type="dinov3_vit", image_size=32, patch_size=8, **TINY)
    for config, grid in ((siglip2, 4), (dinov3, 4)):
        with pytest.warns(UserWarning, match="random weights"):
            teacher = HfTeacher.build(HfParams(config=config), allow_random_init=True)
        out = teacher(torch.rand(1, 3, 32, 32), targets=["spatial"])
        assert out["spatial"].shape == (1, 32, grid, grid)
