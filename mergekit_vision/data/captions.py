"""Captioned images in the Karpathy-split JSON layout of Flickr30k and COCO-Captions.

Karpathy and Fei-Fei ("Deep Visual-Semantic Alignments for Generating Image Descriptions",
CVPR 2015) published one JSON per set (``dataset_flickr30k.json``, ``dataset_coco.json``) that
image-text retrieval papers have used since, SAM-CLIP's Flickr30k numbers among them:

    {"images": [{"filename": "1000092795.jpg", "filepath": "val2014" (COCO only),
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "Two young guys ...", "tokens": [...], ...}, ...]}, ...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import load_image, missing_path_error, resize_image
from mergekit_vision.registry import PluginParams

_LAYOUT = (
    'expected {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}, ...]}, ...]}, '
    "the Karpathy-split JSON (e.g. dataset_flickr30k.json)"
)


@DATASETS.register("captions")
class CaptionsDataset(ImageDataset, Dataset):
    """The images of one split of a Karpathy-split caption file, each with its captions.

    Each sample has ``"captions"``, the image's first ``max_captions_per_image`` captions
    (``list[str]``, the ``raw`` sentences, stripped; Flickr30k has 5 per image, COCO 5 to 7).
    Images are ``<images>/<filepath>/<filename>`` (``filepath`` only when the record has one, as
    COCO's do) in the file's order; the key is ``<filepath>/<filename>``. ``split`` selects
    records by their ``split`` field as written: Karpathy's COCO ``"restval"`` is its own split.
    An image that cannot be decoded is skipped (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = False

    class Params(PluginParams):
        annotations: Path
        images: Path
        split: str = "test"
        max_captions_per_image: int = Field(default=5, ge=1)
        limit: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        images: Path,
        entries: list[tuple[Path, list[str]]],
        resolution: int,
        resize: ResizeMode,
    ):
        """
        Args:
            images: the folder the records' paths are relative to.
            entries: ``(image path relative to images, captions)`` in sample order.
            resolution: side ``R`` of the square output images.
            resize: ``"pad"`` or ``"crop"``.
        """
        self.images, self.entries = images, entries
        self.resolution, self.resize = resolution, resize

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> CaptionsDataset:
        # seed and max_masks are unused: the order is the file's, and there are no masks.
        annotations, images = Path(params.annotations), Path(params.images)
        if not annotations.is_file():
            raise missing_path_error(
                dataset="captions",
                field="annotations",
                path=annotations,
                what="does not exist",
                hint=_LAYOUT,
            )
        if not images.is_dir():
            raise missing_path_error(
                dataset="captions",
                field="images",
                path=images,
                what="does not exist or is not a folder",
                hint="point it at the folder the records' filenames are relative to",
            )
        records = _read_records(annotations)
        chosen = [r for r in records if r.get("split") == params.split]
        if not chosen:
            splits = ", ".join(sorted({str(r.get("split")) for r in records}))
            raise ValueError(
                f"datasets.captions: no image of split '{params.split}' in '{annotations}'; "
                f"its splits: {splits}"
            )
        entries = [
            _entry(record, where=f"'{annotations}' image '{record.get('filename')}'")
            for record in chosen[: params.limit]
        ]
        cap = params.max_captions_per_image
        entries = [(path, captions[:cap]) for path, captions in entries]
        return cls(images=images, entries=entries, resolution=resolution, resize=resize)

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"annotations": Path(params.annotations), "images": Path(params.images)}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="captions")

    def _read(self, index: int) -> dict[str, Any]:
        relative, captions = self.entries[index]
        with decoding(self.images / relative):
            image = load_image(self.images / relative)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "captions": list(captions),
            "key": relative.as_posix(),
        }


def _read_records(annotations: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(annotations.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"datasets.captions: '{annotations}' is not JSON ({err}); {_LAYOUT}"
        ) from err
    records = document.get("images") if isinstance(document, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"datasets.captions: '{annotations}' has no \"images\" list; {_LAYOUT}")
    return records


def _entry(record: dict[str, Any], *, where: str) -> tuple[Path, list[str]]:
    """``(path relative to the image root, captions)`` of one record; a record without a
    filename or without a caption is an error: retrieval needs both sides of every pair."""
    filename = record.get("filename")
    if not isinstance(filename, str) or not filename:
        raise ValueError(f'datasets.captions: {where} has no "filename"; {_LAYOUT}')
    sentences = record.get("sentences")
    if not isinstance(sentences, list):
        raise ValueError(f'datasets.captions: {where} has no "sentences" list; {_LAYOUT}')
    captions = [
        s["raw"].strip()
        for s in sentences
        if isinstance(s, dict) and isinstance(s.get("raw"), str) and s["raw"].strip()
    ]
    if not captions:
        raise ValueError(f'datasets.captions: {where} has no caption ("raw" sentence)')
    return Path(record.get("filepath") or "") / filename, captions
