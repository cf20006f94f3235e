"""--format sam: segment_anything's own Sam, SamPredictor and SamAutomaticMaskGenerator run on the
merged backbone and give the merged model's outputs."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import MergedModel
from mergekit_vision.eval.models import MergedEval
from mergekit_vision.export import ExportError
from mergekit_vision.export.formats import export_run
from mergekit_vision.export.loading import LoadedRun
from mergekit_vision.export.sam import export_sam, load_exported_sam, registry_variant
from mergekit_vision.sam.variants import SAM_VARIANTS


def sam_from_config(folder) -> Sam:
    """The documented build: segment_anything's modules only, sizes from sam_config.json."""
    c = json.loads((folder / "sam_config.json").read_text())["build_sam_model"]
    grid = c["image_size"] // c["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"], embed_dim=c["encoder_embed_dim"],
            img_size=c["image_size"], mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"], patch_size=c["patch_size"], qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=c["encoder_global_attn_indexes"],
            window_size=c["window_size"], out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(c["image_size"], c["image_size"]), mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"], embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"], num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=c["prompt_embed_dim"], iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    )  # fmt: skip
    sam.load_state_dict(torch.load(folder / "sam.pth", weights_only=True), strict=True)
    return sam.eval()


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam")
    export_sam(tiny_run, folder)
    return folder


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 64 x 64 RGB image (the tiny student's native size: no resize, no padding)."""
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_config_names_no_registry_entry_for_toy_sizes(exported):
    config = json.loads((exported / "sam_config.json").read_text())
    assert config["registry"] is None
    assert config["build_sam_model"]["image_size"] == 64  # the student's native size
    assert config["build_sam_model"]["encoder_global_attn_indexes"] == [1]


@pytest.mark.parametrize("variant", list(SAM_VARIANTS))
def test_released_sizes_map_to_their_registry_key(variant):
    dim, depth, heads, global_blocks = SAM_VARIANTS[variant]
    architecture = dict(
        encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads,
        encoder_global_attn_indexes=list(global_blocks), image_size=1024, patch_size=16,
        window_size=14, prompt_embed_dim=256, decoder_depth=2, decoder_mlp_dim=2048,
        decoder_num_heads=8, mask_in_chans=16,
    )  # fmt: skip
    assert registry_variant(architecture) == variant
    assert registry_variant({**architecture, "image_size": 512}) is None


def test_predictor_features_and_masks_equal_the_merged_model(tiny_run, exported, image):
    merged = MergedEval(tiny_run.model, clip_head="clip_head", sam_head="sam_head")
    for sam in (sam_from_config(exported), load_exported_sam(exported)):
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        encoded = merged.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
        assert torch.allclose(predictor.features, encoded.feature_map, atol=1e-4)

        point = np.array([[20.0, 41.0]])
        _, _, low_res = predictor.predict(
            point_coords=point, point_labels=np.array([1]), multimask_output=False
        )
        prompts = Prompts(64, torch.tensor(point, dtype=torch.float32)[None, :, None],
                          torch.ones(1, 1, 1, dtype=torch.long))  # fmt: skip
        ours = merged.mask_logits(encoded, prompts)[0, 0].numpy()
        assert low_res.shape == (1, 32, 32) and np.abs(low_res[0] - ours).max() < 1e-3

        box = np.array([5.0, 8.0, 50.0, 60.0])
        _, _, low_res = predictor.predict(box=box, multimask_output=False)
        prompts = Prompts(64, boxes=torch.tensor(box, dtype=torch.float32)[None, None])
        ours = merged.mask_logits(encoded, prompts)[0, 0].numpy()
        assert np.abs(low_res[0] - ours).max() < 1e-3


def test_automatic_mask_generator_runs_on_the_export(exported, image):
    generator = SamAutomaticMaskGenerator(
        load_exported_sam(exported),
        points_per_side=4,
        pred_iou_thresh=-1e9,
        stability_score_thresh=-1e9,
        box_nms_thresh=1.0,
    )
    masks = generator.generate(image)
    assert len(masks) >= 1
    assert all(m["segmentation"].shape == (64, 64) for m in masks)


def test_other_students_are_refused_with_what_is_possible(tiny_run, tmp_path):
    other = LoadedRun(
        run_dir=tiny_run.run_dir,
        checkpoint=tiny_run.checkpoint,
        recipe=tiny_run.recipe,
        model=MergedModel(student=nn.Linear(2, 2), heads=dict(tiny_run.model.heads)),
        teachers=tiny_run.teachers,
        random_teachers=set(),
    )
    with pytest.raises(ExportError, match="vitdet.*--format safetensors"):
        export_sam(other, tmp_path)


def test_export_run_defaults_to_the_run_folder(tiny_run_dir):
    files = export_run(tiny_run_dir, format="sam")
    assert files[0] == tiny_run_dir / "export" / "sam" / "sam.pth"
    assert files[0].is_file()


@pytest.mark.slow
def test_vit_b_student_exports_to_sam_model_registry(tiny_run, tmp_path):
    from mergekit_vision.heads.sam_head import SamHead
    from mergekit_vision.students.vitdet import ViTDetStudent
    from mergekit_vision.teachers.sam import build_sam_model

    student = ViTDetStudent.build(ViTDetStudent.Params(variant="vit_b"), teachers={})
    dim, depth, heads, global_blocks = SAM_VARIANTS["vit_b"]
    sam = build_sam_model(
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_blocks,
    )
    head = SamHead(prompt_encoder=sam.prompt_encoder, mask_decoder=sam.mask_decoder)
    run = LoadedRun(
        run_dir=tmp_path,
        checkpoint=tmp_path,
        recipe=tiny_run.recipe,
        model=MergedModel(student=student, heads={"sam": head}),
        teachers={},
        random_teachers=set(),
    )
    export_sam(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "sam_config.json").read_text())
    assert config["registry"] == "vit_b"
    loaded = load_exported_sam(tmp_path / "out")  # through sam_model_registry["vit_b"]
    assert torch.equal(loaded.image_encoder.pos_embed, student.pos_embed)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, head.mask_decoder.iou_token.weight)
