"""Image classification in the ImageFolder layout: one subfolder of images per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.image_folder import find_images
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import load_image, missing_path_error, resize_image
from mergekit_vision.registry import PluginParams

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_LAYOUT = "expected <root>/<class folder>/<image>, one folder per class (the ImageFolder layout)"


@DATASETS.register("image_classes")
class ImageClassesDataset(ImageDataset, Dataset):
    """Labelled images: class ``i`` is the ``i``-th subfolder of ``root`` in sorted name order.

    Each sample has ``"label"`` (int). Human-readable class names (:attr:`class_names`, used to
    build zero-shot prompts) come from ``<root>/classes.txt``, one name per line in the same
    sorted-folder order, when present; otherwise from the folder names with ``_`` read as spaces.
    Samples are ordered by class, then by path within the class. An image that cannot be decoded
    is skipped (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = False

    class Params(PluginParams):
        root: Path
        limit: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        root: Path,
        files: list[tuple[Path, int]],
        class_names: list[str],
        resolution: int,
        resize: ResizeMode,
    ):
        """
        Args:
            root: the folder holding one subfolder per class.
            files: ``(path relative to root, label)`` in sample order.
            class_names: human-readable name of each label.
            resolution: side ``R`` of the square output images.
            resize: ``"pad"`` or ``"crop"``.
        """
        self.root, self.files, self._class_names = root, files, class_names
        self.resolution, self.resize = resolution, resize

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> ImageClassesDataset:
        # seed and max_masks are unused: the order is fixed by the folder names, no masks.
        root = Path(params.root)
        if not root.is_dir():
            raise missing_path_error(
                dataset="image_classes",
                field="root",
                path=root,
                what="does not exist or is not a folder",
                hint=_LAYOUT,
            )
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(
                f"datasets.image_classes: root '{root}' has no class folders; {_LAYOUT}"
            )
        files = [
            (Path(folder) / relative, label)
            for label, folder in enumerate(folders)
            for relative in find_images(root / folder, extensions=_EXTENSIONS)
        ]
        if not files:
            raise ValueError(f"datasets.image_classes: no images in the class folders of '{root}'")
        if params.limit is not None:
            files = files[: params.limit]
        names = _class_names(root, folders)
        return cls(root=root, files=files, class_names=names, resolution=resolution, resize=resize)

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"root": Path(params.root)}

    @property
    def class_names(self) -> list[str]:
        """Name of each label, in label order."""
        return list(self._class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="image_classes")

    def _read(self, index: int) -> dict[str, Any]:
        relative, label = self.files[index]
        with decoding(self.root / relative):
            image = load_image(self.root / relative)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "label": label,
            "key": relative.as_posix(),
        }


def _class_names(root: Path, folders: list[str]) -> list[str]:
    names_file = root / "classes.txt"
    if not names_file.is_file():
        return [folder.replace("_", " ") for folder in folders]
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    if len(names) != len(folders):
        raise ValueError(
            f"datasets.image_classes: '{names_file}' has {len(names)} names but root has "
            f"{len(folders)} class folders; it must list one name per folder, in sorted "
            "folder-name order"
        )
    return names
