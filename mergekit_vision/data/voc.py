"""Pascal VOC semantic segmentation layout (Everingham et al. 2010): images and label-map PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import (
    UnreadableImageError,
    load_image,
    missing_path_error,
    resize_image,
    resize_label_map,
)
from mergekit_vision.registry import PluginParams

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255  # VOC marks object borders and padding with it
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT = (
    "expected <root>/ImageSets/Segmentation/<split>.txt, <root>/JPEGImages/<id>.jpg|.png and "
    "<root>/SegmentationClass/<id>.png (e.g. VOCdevkit/VOC2012)"
)


@DATASETS.register("voc")
class VocSegmentationDataset(ImageDataset, Dataset):
    """The images of one VOC split with their semantic label maps; no instance masks.

    Each sample has ``"semantic"``, ``int64 [R, R]``: 0 background, ``1..K`` the classes, 255
    ignore (VOC's object borders, and the area added by ``"pad"`` resizing). Labels are resized
    nearest-neighbour with the image's geometry. Class names (background first) come from
    ``<root>/classes.txt`` when present, one per line, else the 21 VOC 2012 names. A sample whose
    image or label map cannot be decoded is skipped (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = False

    class Params(PluginParams):
        root: Path
        split: str = "val"
        limit: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        root: Path,
        ids: list[str],
        class_names: list[str],
        resolution: int,
        resize: ResizeMode,
    ):
        """
        Args:
            root: the VOC folder (holding ``JPEGImages``, ``SegmentationClass``, ``ImageSets``).
            ids: image ids in sample order.
            class_names: label ``i`` is ``class_names[i]``; ``class_names[0]`` is background.
            resolution: side ``R`` of the square output images and label maps.
            resize: ``"pad"`` or ``"crop"``.
        """
        self.root, self.ids, self._class_names = root, ids, class_names
        self.resolution, self.resize = resolution, resize

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> VocSegmentationDataset:
        # seed and max_masks are unused: the order is the split file's, and there are no masks.
        root = Path(params.root)
        split_file = root / "ImageSets" / "Segmentation" / f"{params.split}.txt"
        for path, what in ((root, "folder"), (split_file, "split file")):
            if not path.exists():
                raise missing_path_error(
                    dataset="voc",
                    field="root",
                    path=path,
                    what=f"({what}) does not exist",
                    hint=_LAYOUT,
                )
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"datasets.voc: split file '{split_file}' lists no image ids")
        if params.limit is not None:
            ids = ids[: params.limit]
        names_file = root / "classes.txt"
        if names_file.is_file():
            names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        else:
            names = list(VOC_CLASSES)
        return cls(root=root, ids=ids, class_names=names, resolution=resolution, resize=resize)

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"root": Path(params.root)}

    @property
    def class_names(self) -> list[str]:
        """Names of labels ``0..K``, background first."""
        return list(self._class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="voc")

    def _read(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        label_path = self.root / "SegmentationClass" / f"{image_id}.png"
        with decoding(label_path):
            labels = read_label_map(label_path)
        with decoding(self.root / "JPEGImages" / f"{image_id}.*"):
            image_path = self._image_path(image_id)
        with decoding(image_path):
            image = load_image(image_path, expected_size=tuple(labels.shape))
        geometry = {"resolution": self.resolution, "mode": self.resize}
        return {
            "image": resize_image(image, **geometry),
            "semantic": resize_label_map(labels, fill=IGNORE_INDEX, **geometry),
            "key": image_id,
        }

    def _image_path(self, image_id: str) -> Path:
        folder = self.root / "JPEGImages"
        for suffix in _IMAGE_SUFFIXES:
            if (folder / f"{image_id}{suffix}").is_file():
                return folder / f"{image_id}{suffix}"
        raise missing_path_error(
            dataset="voc",
            field="root",
            path=folder / f"{image_id}.jpg",
            what=f"does not exist (nor with {', '.join(_IMAGE_SUFFIXES[1:])})",
            hint=_LAYOUT,
        )


def read_label_map(path: Path) -> torch.Tensor:
    """A VOC label PNG (palette or greyscale, one class index per pixel) as ``int64 [H, W]``."""
    if not path.is_file():
        raise missing_path_error(
            dataset="voc", field="root", path=path, what="does not exist", hint=_LAYOUT
        )
    try:
        with Image.open(path) as label_image:
            if label_image.mode not in ("P", "L"):
                raise ValueError(
                    f"datasets.voc: label map '{path}' is mode {label_image.mode}; expected a "
                    "palette (P) or greyscale (L) PNG of class indices"
                )
            values = np.asarray(label_image, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImageError(f"cannot read label map '{path}': {exc}") from exc
    return torch.from_numpy(values.astype(np.int64))
