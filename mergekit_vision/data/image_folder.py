"""A folder (searched recursively) of image files, without annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import load_image, missing_path_error, resize_image
from mergekit_vision.registry import PluginParams


@DATASETS.register("image_folder")
class ImageFolderDataset(ImageDataset, Dataset):
    """Every image under a folder, recursively, in sorted path order; images only, no masks.
    An image that cannot be decoded is skipped (:mod:`mergekit_vision.data.skips`).

    Keys are paths relative to ``root`` (POSIX form), so caches keyed by them survive moving
    the folder.
    """

    has_masks = False

    class Params(PluginParams):
        root: Path
        extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
        limit: int | None = Field(default=None, ge=1)

        @field_validator("extensions")
        @classmethod
        def _normalize(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in value)

    def __init__(self, *, root: Path, files: list[Path], resolution: int, resize: ResizeMode):
        """
        Args:
            root: the folder ``files`` are relative to.
            files: image paths relative to ``root``, in sample order.
            resolution: side ``R`` of the square output images.
            resize: ``"pad"`` or ``"crop"`` (see :mod:`mergekit_vision.data.transforms`).
        """
        self.root, self.files = root, files
        self.resolution, self.resize = resolution, resize

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> ImageFolderDataset:
        # seed and max_masks are unused: the order is the sorted file list and there are no masks.
        root = Path(params.root)
        if not root.is_dir():
            raise missing_path_error(
                dataset="image_folder",
                field="root",
                path=root,
                what="does not exist or is not a folder",
                hint="point it at a folder of images",
            )
        files = find_images(root, extensions=params.extensions)
        if not files:
            raise ValueError(
                f"datasets.image_folder: no images under root '{root}' "
                f"(looked for {', '.join(params.extensions)}, recursively)"
            )
        if params.limit is not None:
            files = files[: params.limit]
        return cls(root=root, files=files, resolution=resolution, resize=resize)

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"root": Path(params.root)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="image_folder")

    def _read(self, index: int) -> dict[str, Any]:
        relative = self.files[index]
        with decoding(self.root / relative):
            image = load_image(self.root / relative)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "key": relative.as_posix(),
        }


def find_images(root: Path, *, extensions: tuple[str, ...]) -> list[Path]:
    """Paths relative to ``root`` of files whose suffix (any case) is in ``extensions``, sorted."""
    wanted = {e.lower() for e in extensions}
    found = (p for p in root.rglob("*") if p.suffix.lower() in wanted and p.is_file())
    return sorted((p.relative_to(root) for p in found), key=lambda p: p.as_posix())
