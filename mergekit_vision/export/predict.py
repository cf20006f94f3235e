"""``vmerge predict`` as a library call: a merged run's two abilities on any image file.

- text-prompted semantic segmentation: the CLIP head's per-patch embeddings against the class
  names' text embeddings (MaskCLIP, Zhou et al., ECCV 2022), refined by the SAM head as SAM-CLIP
  does (Wang et al., arXiv 2310.15308, sec. 5.2), through the evaluation's own functions
  (``refined_labels`` and ``dense_labels`` of :mod:`mergekit_vision.eval.tasks`);
- point- and box-prompted masks from the SAM head (Kirillov et al., arXiv 2304.02643).

Prompted masks see the image exactly as segment_anything's ``SamPredictor`` feeds it to a ``Sam``
(so ``vmerge predict`` on a run and ``SamPredictor`` on its ``--format sam`` export agree): the
longest side resized to ``R`` by ``ResizeLongestSide.apply_image``, pixels normalized, zero padding
bottom and right after normalization, prompts mapped by ``apply_coords``/``apply_boxes``, and mask
logits cropped and resized back as ``Sam.postprocess_masks`` does. Class labels see the image as
``vmerge eval`` does (:func:`~mergekit_vision.data.transforms.resize_image`, the geometry its
calibrated threshold was measured on), cropped back and resized to the original size. Outputs are
label PNGs (palette mode: pixel value = label index) and overlay PNGs, plus ``predictions.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.data.transforms import (
    UnreadableImageError,
    _scaled_size,
    load_image,
    resize_image,
)
from mergekit_vision.eval.models import ClipTeacherEval, MergedEval
from mergekit_vision.eval.pictures import label_colours
from mergekit_vision.eval.tasks import (
    MaskClass,
    class_text_embeddings,
    dense_labels,
    refined_labels,
)
from mergekit_vision.export import ExportError
from mergekit_vision.export.card import read_eval
from mergekit_vision.export.loading import LoadedRun, load_run
from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.recipe.schema import task_of_head

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class PredictError(ExportError):
    """Images or prompts that cannot be predicted on; says what was expected."""


class SamResize(ResizeLongestSide):
    """segment_anything's ``ResizeLongestSide``, except that no side shrinks to 0 pixels.

    SAM's rounding gives a 3000x10 strip a 0-pixel height at 64 px (at 1024 px, any strip longer
    than 2048:1), which no resize accepts; every other image gets SAM's own size.
    """

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        height, width = ResizeLongestSide.get_preprocess_shape(oldh, oldw, long_side_length)
        return max(height, 1), max(width, 1)


@dataclass
class Predictor:
    """A loaded run ready to predict at ``resolution`` (images are fitted to ``R x R``)."""

    run: LoadedRun
    model: MergedEval
    resolution: int
    threshold: float
    refine: bool
    points_per_class: int
    templates: tuple[str, ...]
    mask_class: MaskClass = "pooled"

    @classmethod
    def load(
        cls,
        run_dir: Path,
        *,
        resolution: int | None = None,
        threshold: float | None = None,
        refine: bool = True,
    ) -> Predictor:
        run = load_run(run_dir)
        clip_head = run.head_name(ClipHead)
        model = MergedEval(
            run.model,
            clip_head=clip_head,
            sam_head=run.head_name(SamHead),
            clip_task=task_of_head(run.recipe.tasks, clip_head),
        )
        spec = run.recipe.eval
        size = resolution or (spec.resolution if spec else _sam_resolution(run))
        return cls(
            run=run,
            model=model,
            resolution=size,
            threshold=_threshold(run, size, refine) if threshold is None else threshold,
            refine=refine,
            points_per_class=spec.points_per_class if spec else 3,
            templates=tuple(spec.templates) if spec else DEFAULT_TEMPLATES,
            mask_class=spec.refined_mask_class if spec else "pooled",
        )

    def text_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """``[K, D]`` class embeddings from the CLIP teacher's text tower."""
        name = self.run.teacher_of(self.run.head_name(ClipHead))
        teacher = self.run.require_teacher(name, why="text-prompted segmentation (--classes)")
        return class_text_embeddings(ClipTeacherEval(teacher), list(class_names), self.templates)

    def fit(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``uint8 [3, H, W]`` -> ``[1, 3, R, R]`` in [0, 1] as ``vmerge eval`` fits images,
        and the resized ``(h, w)`` in it."""
        inner = _scaled_size(*image.shape[-2:], resolution=self.resolution, mode="pad")
        fitted = resize_image(image, resolution=self.resolution, mode="pad")
        return fitted[None].float() / 255.0, inner

    def fit_as_sam(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``uint8 [3, H, W]`` -> ``[1, 3, R, R]`` in [0, 1] as ``SamPredictor.set_image``
        prepares it, and the resized ``(h, w)`` in it.

        ``Sam.preprocess`` pads with zeros after normalizing; the student normalizes itself, so
        the padding here is its pixel mean, which its normalization turns into those zeros.
        """
        resized = SamResize(self.resolution).apply_image(image.permute(1, 2, 0).numpy())
        height, width = resized.shape[:2]
        mean = torch.tensor(self.run.model.student.pixel_mean, dtype=torch.float32)
        fitted = mean.view(3, 1, 1).repeat(1, self.resolution, self.resolution)
        fitted[:, :height, :width] = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
        return fitted[None], (height, width)

    @torch.no_grad()
    def labels(self, images: Tensor, texts: Tensor) -> Tensor:
        """``[B, R, R]`` labels (0 background, ``k + 1`` class ``k``) of fitted images."""
        if self.refine:
            return refined_labels(
                self.model,
                images,
                texts,
                self.threshold,
                points_per_class=self.points_per_class,
                mask_class=self.mask_class,
            )
        return dense_labels(self.model, images, texts, self.threshold)

    @torch.no_grad()
    def mask_logits(self, images: Tensor, prompts: Prompts) -> Tensor:
        """``[N, R, R]`` mask logits of one fitted image's prompts (points first, then boxes),
        upsampled to the input as ``Sam.postprocess_masks`` does first."""
        logits = self.model.mask_logits(self.model.encode(images), prompts)[0]
        return F.interpolate(logits[None].float(), size=images.shape[-2:], mode="bilinear")[0]


@dataclass
class Prediction:
    """One image's outputs at its original size and the files they were written to."""

    image: Path
    labels: np.ndarray | None = None  # uint8 [H, W]
    masks: np.ndarray | None = None  # bool [N, H, W]
    files: dict[str, str] = field(default_factory=dict)


def predict(
    run_dir: Path,
    images: Sequence[Path],
    *,
    classes: Sequence[str] = (),
    points: Sequence[tuple[float, float]] = (),
    boxes: Sequence[tuple[float, float, float, float]] = (),
    output: Path | None = None,
    resolution: int | None = None,
    threshold: float | None = None,
    refine: bool = True,
) -> list[Prediction]:
    """Segment ``images`` by class names and/or prompts (pixels of the original image); write
    ``<stem>_semantic.png``/``_semantic_overlay.png`` and ``<stem>_prompts.png``/``_overlay.png``
    into ``output`` (default ``<run_dir>/predict``), and ``predictions.json``."""
    if not classes and not points and not boxes:
        raise PredictError("nothing to predict: give --classes, --points or --boxes")
    if len(set(classes)) != len(classes):
        raise PredictError(f"class names repeat: {', '.join(classes)}")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    if len(classes) > 254:
        raise PredictError("at most 254 classes fit a label PNG")
    predictor = Predictor.load(
        Path(run_dir), resolution=resolution, threshold=threshold, refine=refine
    )
    output = Path(output or Path(run_dir) / "predict")
    texts = predictor.text_embeddings(classes) if classes else None
    results = []
    for path in images:
        results.append(
            _predict_one(predictor, Path(path), texts, list(classes), points, boxes, output)
        )
    summary = {
        "classes": ["background", *classes],
        "threshold": predictor.threshold,
        "refined": predictor.refine,
        "resolution": predictor.resolution,
        "images": {str(r.image): r.files for r in results},
    }
    (output / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def _predict_one(predictor, path, texts, classes, points, boxes, output) -> Prediction:
    try:
        image = load_image(path)
    except UnreadableImageError as error:
        raise PredictError(str(error)) from error
    height, width = image.shape[-2:]
    prompts = None
    if points or boxes:
        prompts = to_prompts(points, boxes, (height, width), predictor.resolution)
    output.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    result = Prediction(image=path)
    rgb = image.permute(1, 2, 0).numpy()
    if texts is not None:
        fitted, inner = predictor.fit(image)
        labels = predictor.labels(fitted, texts)[0]
        result.labels = restore_labels(labels, inner, (height, width))
        result.files["semantic"] = _save_labels(result.labels, output / f"{path.stem}_semantic.png")
        overlay = _overlay(rgb, result.labels, ["background", *classes])
        result.files["semantic_overlay"] = _save(
            overlay, output / f"{path.stem}_semantic_overlay.png"
        )
    if prompts is not None:
        fitted, inner = predictor.fit_as_sam(image)
        logits = restore_logits(predictor.mask_logits(fitted, prompts), inner, (height, width))
        result.masks = (logits > 0).numpy()
        winner = torch.where(logits.amax(0) > 0, logits.argmax(0) + 1, 0).to(torch.uint8).numpy()
        result.files["prompts"] = _save_labels(winner, output / f"{path.stem}_prompts.png")
        names = ["background", *[f"prompt {i + 1}" for i in range(len(logits))]]
        overlay = _draw_prompts(_overlay(rgb, winner, names), points, boxes)
        result.files["prompts_overlay"] = _save(
            overlay, output / f"{path.stem}_prompts_overlay.png"
        )
    return result


def to_prompts(points, boxes, original: tuple[int, int], size: int) -> Prompts:
    """Original-image pixel prompts -> :class:`Prompts` on the image fitted to ``size`` by
    :meth:`Predictor.fit_as_sam` (SAM's ``apply_coords`` and ``apply_boxes``); one prompt per
    point and per box, as ``SamPredictor.predict`` with one of them."""
    height, width = original
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise PredictError(f"point ({x}, {y}) lies outside the {width}x{height} image")
    if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes):
        raise PredictError("boxes are x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    transform = SamResize(size)
    point_tensor = box_tensor = label_tensor = None
    if points:
        mapped = transform.apply_coords(np.asarray(points, dtype=np.float64), original)
        point_tensor = torch.as_tensor(mapped, dtype=torch.float32)[None, :, None]
        label_tensor = torch.ones(1, len(points), 1, dtype=torch.long)
    if boxes:
        mapped = transform.apply_boxes(np.asarray(boxes, dtype=np.float64), original)
        box_tensor = torch.as_tensor(mapped, dtype=torch.float32)[None]
    return Prompts(size, point_tensor, label_tensor, box_tensor)


def restore_labels(labels: Tensor, inner: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """``[R, R]`` labels of a fitted image -> ``uint8 [H, W]`` (crop the padding, nearest)."""
    cropped = labels[: inner[0], : inner[1]].to(torch.uint8)[None, None]
    return F.interpolate(cropped, size=original, mode="nearest-exact")[0, 0].numpy()


def restore_logits(logits: Tensor, inner: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """``[N, R, R]`` logits -> ``[N, H, W]``: crop the padding, then bilinear, as the rest of
    ``Sam.postprocess_masks`` (a method of a built ``Sam``, which a merged run does not have)."""
    cropped = logits[:, : inner[0], : inner[1]][None]
    return F.interpolate(cropped, size=original, mode="bilinear", align_corners=False)[0]


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """``"x,y"`` -> ``(x, y)``; a clear error for anything else."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise PredictError(f"{what} {text!r}: expected {count} comma-separated numbers")
    return values


def parse_classes(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _palette(count: int) -> list[int]:
    colours = (label_colours(max(count, 2)).colors * 255).round().astype(int)
    flat = [int(v) for colour in colours[:count] for v in colour[:3]]
    return flat + [255, 255, 255] * (256 - count)


def _save_labels(labels: np.ndarray, path: Path) -> str:
    picture = Image.fromarray(labels.astype(np.uint8), mode="P")
    picture.putpalette(_palette(int(labels.max()) + 1))
    picture.save(path)
    return str(path)


def _overlay(rgb: np.ndarray, labels: np.ndarray, names: list[str]) -> Image.Image:
    """The image with labelled pixels tinted by their colour, and a legend strip below."""
    colours = np.asarray(_palette(len(names))[: 3 * len(names)], dtype=np.float32).reshape(-1, 3)
    tinted = np.where(
        (labels > 0)[..., None], 0.45 * rgb + 0.55 * colours[labels], rgb.astype(np.float32)
    )
    picture = Image.fromarray(tinted.round().astype(np.uint8))
    shown = [i for i in range(1, len(names)) if (labels == i).any()]
    legend = Image.new("RGB", (picture.width, 14 * max(len(shown), 1) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for row, index in enumerate(shown):
        draw.rectangle(
            [4, 4 + 14 * row, 14, 14 + 14 * row], fill=tuple(int(c) for c in colours[index])
        )
        draw.text((20, 3 + 14 * row), names[index], fill=(0, 0, 0))
    combined = Image.new("RGB", (picture.width, picture.height + legend.height))
    combined.paste(picture, (0, 0))
    combined.paste(legend, (0, picture.height))
    return combined


def _draw_prompts(picture: Image.Image, points, boxes) -> Image.Image:
    draw = ImageDraw.Draw(picture)
    radius = max(2, picture.width // 100)
    for x, y in points:
        draw.ellipse(
            [x - radius, y - radius, x + radius, y + radius], outline=(255, 255, 255), width=2
        )
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=2)
    return picture


def _save(picture: Image.Image, path: Path) -> str:
    picture.save(path)
    return str(path)


def _sam_resolution(run: LoadedRun) -> int:
    head = run.head_name(SamHead)
    task = next(t for t in run.recipe.tasks.values() if t.head == head)
    return max(task.resolutions())


def _threshold(run: LoadedRun, resolution: int, refine: bool) -> float:
    """The background threshold the run's evaluation calibrated (0.5 when it has none)."""
    metrics = read_eval(run) or {}
    merged = metrics.get("models", {}).get("merged", {})
    at = merged.get("by_resolution", {}).get(str(resolution), merged)
    key = "semseg_refined_threshold" if refine else "semseg_threshold"
    return float(at.get(key, 0.5))
