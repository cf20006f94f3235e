"""The radio student: from a ``save_pretrained`` folder of transformers' ``RadioModel`` it computes
that model's own features and summary at any multiple of its patch size (non-square included),
its weights load back into ``RadioModel``, and a folder or config that does not fit is refused
with a message saying what to fix."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from transformers import RadioModel

from mergekit_vision.errors import WeightsFileError
from mergekit_vision.students.lora import apply_lora, lora_parameters, merge_lora
from mergekit_vision.students.radio import RadioStudent, radio_config

from ..tiny_radio import TINY_RADIO_CONFIG, write_tiny_radio


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c-radio")
    return folder, write_tiny_radio(folder, seed=3)


def build(**params) -> RadioStudent:
    return RadioStudent.build(
        RadioStudent.Params(config=TINY_RADIO_CONFIG, **params), teachers={}
    ).eval()


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (40, 24)])
def test_a_saved_folder_gives_transformers_own_outputs(saved, size):
    folder, model = saved
    student = build(path=folder)
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        features = student(images, return_intermediates=True)
        want = model(pixel_values=images, output_hidden_states=True)
    grid = (size[0] // 8, size[1] // 8)
    torch.testing.assert_close(features.tokens, want.features.reshape(2, *grid, 32))
    torch.testing.assert_close(student.summary(features.prefix_tokens), want.summary)
    assert features.prefix_tokens.shape == (2, 4, 32)  # two class tokens, two registers
    for mine, theirs in zip(features.intermediates, want.hidden_states[-3:], strict=True):
        torch.testing.assert_close(mine, theirs[:, 4:].reshape(2, *grid, 32))
    assert features.feature_map.shape == (2, 32, *grid)


def test_weights_load_back_into_radio_model(saved):
    student = build(path=saved[0])
    rebuilt = RadioModel(radio_config(TINY_RADIO_CONFIG)).eval()
    rebuilt.load_state_dict(student.model.state_dict(), strict=True)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values=images).features, saved[1](images).features)


def test_random_weights_and_what_the_student_says_of_itself():
    student = build(native_size=48)
    assert (student.embed_dim, student.out_channels, student.patch_size) == (32, 32, 8)
    assert student.native_size == 48 and student.num_prefix_tokens == 4
    assert len(student.transformer_blocks()) == 3
    assert student.pixel_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert build().native_size == 32  # the config's image_size
    params = RadioStudent.Params(config=TINY_RADIO_CONFIG, path="c-radio")
    assert RadioStudent.checkpoint_fields(params) == {"path": params.path / "config.json"}


def test_activation_checkpointing_gives_the_same_gradients():
    student = build().train()
    images = torch.rand(1, 3, 32, 32)
    student(images).tokens.square().sum().backward()
    plain = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    student.activation_checkpointing = True
    student(images).tokens.square().sum().backward()
    for want, parameter in zip(plain, student.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, want)


def test_lora_on_its_attention_merges_back_into_radio_model_weights():
    student = build()
    keys = set(student.state_dict())
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        base_tokens = student(images).tokens
    adapted = apply_lora(student, rank=2, alpha=4.0, targets=["q_proj", "v_proj"])
    assert adapted[:2] == [
        "model.encoder.layer.0.attention.q_proj",
        "model.encoder.layer.0.attention.v_proj",
    ]
    assert len(adapted) == 6
    with torch.no_grad():
        for parameter in lora_parameters(student):
            parameter.normal_()
        adapted_tokens = student(images).tokens
        assert not torch.allclose(adapted_tokens, base_tokens, atol=1e-3)  # the updates act
        assert merge_lora(student) == 6
        torch.testing.assert_close(student(images).tokens, adapted_tokens, atol=1e-4, rtol=1e-4)
    assert set(student.state_dict()) == keys


def test_folders_and_configs_that_do_not_fit_are_refused(saved, tmp_path):
    wider = {**TINY_RADIO_CONFIG, "hidden_size": 48}
    with pytest.raises(WeightsFileError, match=r"do not fit the student's config \(.*48"):
        RadioStudent.build(RadioStudent.Params(config=wider, path=saved[0]), teachers={})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(WeightsFileError, match="holds a 'dinov2' model"):
        build(path=tmp_path)
    with pytest.raises(WeightsFileError, match="cannot read its config.json"):
        build(path=tmp_path / "absent")
    with pytest.raises(ValidationError, match=r"unknown or derived key\(s\) \['hidden'\]"):
        RadioStudent.Params(config={"hidden": 32})
    with pytest.raises(ValidationError, match="video_temporal_patch_size"):
        RadioStudent.Params(config={"video_temporal_patch_size": 2})
    with pytest.raises(ValidationError, match="not both"):
        RadioStudent.Params(config=TINY_RADIO_CONFIG, path="x", pretrained="nvidia/c-radio")
    with pytest.raises(ValidationError, match="multiple of patch_size 8"):
        RadioStudent.Params(config=TINY_RADIO_CONFIG, native_size=36)
    with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
        build()(torch.rand(1, 3, 36, 32))
