"""vmerge predict on a toy-world scene and on a real photo: label PNGs are the model's argmax,
prompted masks follow the prompts mapped onto the padded model input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import Prompts
from mergekit_vision.data.toy_world.world import ToyWorldConfig, class_names, generate_scene
from mergekit_vision.data.transforms import load_image, resize_image
from mergekit_vision.eval.metrics import dense_semseg_from_embeddings
from mergekit_vision.eval.models import ClipTeacherEval, MergedEval
from mergekit_vision.eval.tasks import class_text_embeddings, refined_labels
from mergekit_vision.export.loading import load_run
from mergekit_vision.export.predict import restore_labels
from mergekit_vision.sam.variants import SAM_PIXEL_MEAN

TINY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_sam_clip.yaml"
TEMPLATES = ["a photo of a {}."]  # the tiny recipe has no eval section: predict's default


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoints) -> Path:
    folder = tmp_path_factory.mktemp("predict") / "run"
    args = [
        "run", str(TINY_RECIPE),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
        "--output", str(folder), "--max-steps", "2",
    ]  # fmt: skip
    assert main(args) == 0
    return folder


@pytest.fixture(scope="module")
def merged(run_dir):
    run = load_run(run_dir)
    model = MergedEval(run.model, clip_head="clip_head", sam_head="sam_head")
    return model, ClipTeacherEval(run.teachers["clip"])


@pytest.fixture(scope="module")
def toy_image(tmp_path_factory) -> tuple[Path, list[str]]:
    """A toy-world scene cut to 128 x 96 (H x W), so predict has to pad; and its class names."""
    config = ToyWorldConfig()
    scene = generate_scene(config, seed=0, index=3)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(scene.image[:, :, :96].permute(1, 2, 0).numpy()).save(path)
    names = class_names(config)
    present = sorted({names[int(c)] for c in scene.classes})
    return path, present + [n for n in names if n not in present][:1]


def fitted(path: Path) -> torch.Tensor:
    return resize_image(load_image(path), resolution=64, mode="pad")[None].float() / 255


def sam_fitted(path: Path) -> torch.Tensor:
    """The image as SamPredictor feeds it to Sam: SAM's resize, then padding that the student's
    normalization turns into Sam.preprocess's zeros."""
    resized = ResizeLongestSide(64).apply_image(load_image(path).permute(1, 2, 0).numpy())
    image = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1).repeat(1, 1, 64, 64)
    height, width = resized.shape[:2]
    image[0, :, :height, :width] = torch.from_numpy(resized).permute(2, 0, 1) / 255
    return image


def read_png(path: Path) -> np.ndarray:
    picture = Image.open(path)
    assert picture.mode == "P"
    return np.asarray(picture)


def test_toy_scene_label_png_is_the_argmax_of_the_clip_head_logits(
    run_dir, merged, toy_image, tmp_path
):
    path, classes = toy_image
    args = ["predict", str(run_dir), str(path), "--classes", ",".join(classes), "--no-refine",
            "--threshold", "0.3", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    model, teacher = merged
    texts = class_text_embeddings(teacher, classes, TEMPLATES)
    _, logits = dense_semseg_from_embeddings(model.embed_patches(fitted(path)), texts, size=64)
    probability, best = torch.softmax(100 * logits[0], dim=0).max(0)
    expected = torch.where(probability >= 0.3, best + 1, 0)[:64, :48]  # 128 x 96 -> 64 x 48
    expected = expected.repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
    labels = read_png(tmp_path / "scene_semantic.png")
    assert labels.shape == (128, 96)
    assert len(np.unique(expected)) >= 2  # not a trivially uniform picture
    np.testing.assert_array_equal(labels, expected)
    overlay = Image.open(tmp_path / "scene_semantic_overlay.png")
    assert overlay.width == 96 and overlay.height > 128  # the image, then its legend


def test_toy_scene_prompt_masks_follow_the_prompts(run_dir, merged, toy_image, tmp_path):
    path, _ = toy_image
    args = ["predict", str(run_dir), str(path), "--points", "30,70", "--boxes", "10,10,60,100",
            "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    model, _ = merged
    image = sam_fitted(path)
    prompts = Prompts(  # the 128 x 96 image is halved to fit 64 x 64
        64,
        torch.tensor([[[[15.0, 35.0]]]]),
        torch.ones(1, 1, 1, dtype=torch.long),
        torch.tensor([[[5.0, 5.0, 30.0, 50.0]]]),
    )
    logits = model.mask_logits(model.encode(image), prompts)[0]
    logits = F.interpolate(logits[None], size=(64, 64), mode="bilinear")[:, :, :64, :48]
    logits = F.interpolate(logits, size=(128, 96), mode="bilinear")[0]
    expected = torch.where(logits.amax(0) > 0, logits.argmax(0) + 1, 0).numpy()
    labels = read_png(tmp_path / "scene_prompts.png")
    assert labels.shape == (128, 96)
    assert (labels == expected).mean() > 0.999
    assert Image.open(tmp_path / "scene_prompts_overlay.png").width == 96


def test_real_photo_refined_labels_at_the_photo_size(run_dir, merged, tmp_path):
    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    classes = ["person", "flag", "sky"]
    args = ["predict", str(run_dir), str(photo), "--classes", ",".join(classes),
            "--threshold", "0.0", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    model, teacher = merged
    texts = class_text_embeddings(teacher, classes, TEMPLATES)
    labels = refined_labels(model, fitted(photo), texts, 0.0, points_per_class=3)[0]
    expected = restore_labels(labels, (64, 55), (600, 512))  # 512 x 600 photo: 55 x 64 inside
    png = read_png(tmp_path / "grace_hopper_semantic.png")
    assert png.shape == (600, 512)
    np.testing.assert_array_equal(png, expected)
    assert (tmp_path / "grace_hopper_semantic_overlay.png").is_file()
    assert (tmp_path / "predictions.json").is_file()


def test_restore_labels_crops_the_padding_and_scales_back():
    labels = torch.tensor([[1, 2, 9], [3, 4, 9], [9, 9, 9]])
    restored = restore_labels(labels, (2, 2), (4, 4))
    np.testing.assert_array_equal(
        restored, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to predict"),
        (["--points", "200,10"], "outside the 96x128 image"),
        (["--boxes", "1,2,3"], "expected 4 comma-separated numbers"),
        (["--classes", "cat,cat"], "class names repeat"),
    ],
)
def test_user_errors_exit_2(run_dir, toy_image, tmp_path, capsys, extra, message):
    path, _ = toy_image
    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(path), "--output", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # a failed call leaves nothing behind


def test_unreadable_image_exits_2_without_output(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(bad), "--points", "1,1", "--output", str(out)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not out.exists()


def test_a_region_covering_the_image_embeds_as_the_image(merged):
    # embed_regions pools the CLIP head's tokens over a region; over the whole image that is
    # the head's image embedding, and a smaller region gets an embedding of its own.
    model, _ = merged
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = model.encode(images)
    regions = torch.zeros(2, 64, 64, dtype=torch.bool)
    regions[0] = True
    regions[1, :20, :20] = True
    embedded = model.embed_regions(model.head_tokens(features)[0], regions)
    torch.testing.assert_close(embedded[0], model.embed_images(images)[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embedded[1], embedded[0], atol=1e-3)


def odd_image(kind: str, folder: Path) -> Path:
    """A valid image of an unusual size or PIL mode."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    pictures = {
        "strip_3000x10": lambda: Image.fromarray(rng.integers(0, 256, (10, 3000, 3), np.uint8)),
        "strip_10x3000": lambda: Image.fromarray(rng.integers(0, 256, (3000, 10, 3), np.uint8)),
        "pixel_1x1": lambda: Image.fromarray(rgb[:1, :1]),
        "sixteen_bit": lambda: Image.fromarray(rng.integers(0, 65536, (40, 30), np.uint16)),
        "rgba": lambda: Image.fromarray(rng.integers(0, 256, (40, 30, 4), np.uint8)),
        "grey_alpha": lambda: Image.fromarray(rgb).convert("LA"),
        "grey": lambda: Image.fromarray(rgb).convert("L"),
        "palette": lambda: Image.fromarray(rgb).convert("P"),
        "one_bit": lambda: Image.fromarray(rgb).convert("1"),
    }
    path = folder / f"{kind}.png"
    pictures[kind]().save(path)
    return path


@pytest.mark.parametrize(
    "kind",
    ["strip_3000x10", "strip_10x3000", "pixel_1x1", "sixteen_bit", "rgba", "grey_alpha", "grey",
     "palette", "one_bit"],
)  # fmt: skip
def test_valid_odd_images_predict_at_their_own_size(run_dir, tmp_path, kind):
    path = odd_image(kind, tmp_path)
    width, height = Image.open(path).size
    args = ["predict", str(run_dir), str(path), "--classes", "circle,square", "--points", "0,0",
            "--boxes", f"0,0,{width},{height}", "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    for name in ("semantic", "prompts"):
        assert read_png(tmp_path / "out" / f"{kind}_{name}.png").shape == (height, width)


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped(tmp_path):
    values = np.array([[0, 257, 128 * 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (3, 1, 4)
    assert image[:, 0].tolist() == [[0, 1, 128, 255]] * 3
