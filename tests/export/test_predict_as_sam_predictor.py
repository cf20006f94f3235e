"""``vmerge predict`` on a run and segment_anything's ``SamPredictor`` on its ``--format sam``
export see a non-square image the same way (ResizeLongestSide, normalization, bottom-right
padding, masks cropped and resized back), so their masks agree."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from segment_anything import SamPredictor

from mergekit_vision.cli.main import main
from mergekit_vision.export.sam import load_exported_sam


@pytest.fixture(scope="module")
def sam_predictor(tiny_run_dir, tmp_path_factory) -> SamPredictor:
    folder = tmp_path_factory.mktemp("sam_export")
    assert main(["export", str(tiny_run_dir), "--format", "sam", "--output", str(folder)]) == 0
    return SamPredictor(load_exported_sam(folder))


def vmerge_mask(run_dir, image, prompt: list[str], output) -> np.ndarray:
    """``vmerge predict`` with one prompt: its label PNG is 1 where the mask is."""
    assert main(["predict", str(run_dir), str(image), *prompt, "--output", str(output)]) == 0
    return np.asarray(Image.open(output / f"{image.stem}_prompts.png")) == 1


@pytest.mark.parametrize(("height", "width"), [(96, 160), (160, 64)])
def test_masks_agree_with_sam_predictor_on_non_square_images(
    tiny_run_dir, sam_predictor, tmp_path, height, width
):
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(pixels).save(image)
    sam_predictor.set_image(pixels)
    x0, y0, x1, y1 = 0.1 * width, 0.15 * height, 0.7 * width, 0.9 * height
    prompts = {
        "point": (["--points", f"{0.3 * width},{0.6 * height}"], {"point_labels": np.array([1])}),
        "corner": (["--points", f"{width - 1},{height - 1}"], {"point_labels": np.array([1])}),
        "box": (["--boxes", f"{x0},{y0},{x1},{y1}"], {"box": np.array([x0, y0, x1, y1])}),
    }
    for name, (args, sam_args) in prompts.items():
        if "point_labels" in sam_args:
            sam_args["point_coords"] = np.array([[float(v) for v in args[1].split(",")]])
        expected = sam_predictor.predict(**sam_args, multimask_output=False)[0][0]
        ours = vmerge_mask(tiny_run_dir, image, args, tmp_path / name)
        assert ours.shape == (height, width)
        assert 0.01 < expected.mean() < 0.99, name  # a mask with an edge to get right
        assert (ours == expected).mean() >= 0.999, name
