"""Sample files in the layouts the loaders read, for ``vmerge bench --data --synthetic``.

What a loader costs depends on the bytes it is handed: JPEG decoding scales with the pixels and
the entropy-coded data, mask decoding with the annotations' image size and count. So the files
imitate the real sets rather than being minimal:

- SA-1B (Kirillov et al. 2023): released images are downscaled to 1500 px on the short side
  (2250 x 1500 for the usual 3:2 photo) with about 100 masks each (1.1 B masks on 11 M images);
  one folder of ``sa_<id>.jpg`` + ``sa_<id>.json``, masks as COCO compressed RLE.
- WebDataset shards (the format of CC12M, DataComp, Merged-41M): tar files of ``<key>.jpg`` +
  ``<key>.txt``, images stored at the training size (1024 px on the short side here).

The pictures are photo-like (a smooth random field with sensor-like noise, JPEG quality 90 with
4:2:0 chroma, as cameras and web crawls store them), so they compress to about the bits per
pixel of photographs; flat or pure-noise images would decode much faster or slower than real ones.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

SA1B_SIZE = (1500, 2250)  # (H, W) of a released SA-1B image
SA1B_MASKS = 100  # SA-1B's average masks per image
WEB_SIZE = (1024, 1365)  # (H, W): 4:3, short side at the 1024 px training size
JPEG_QUALITY = 90


def photo_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [H, W, 3]``: a bicubically upsampled coarse random field plus Gaussian noise."""
    coarse = rng.random((max(2, height // 128), max(2, width // 128), 3)) * 255
    field = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(field, dtype=np.float32) + rng.normal(0, 8, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def random_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [H, W]``: one filled ellipse or rectangle, from a few pixels to most of the image
    (sides log-uniform, as object sizes in SA-1B spread over orders of magnitude)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    h = max(2, int(height * 10 ** rng.uniform(-2, -0.1)))
    w = max(2, int(width * 10 ** rng.uniform(-2, -0.1)))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    if rng.random() < 0.5:
        mask[top : top + h, left : left + w] = 1
    else:
        rows = ((np.arange(h) + 0.5) / h * 2 - 1)[:, None]
        cols = ((np.arange(w) + 0.5) / w * 2 - 1)[None, :]
        mask[top : top + h, left : left + w] = rows**2 + cols**2 <= 1
    return mask


def write_sa1b_folder(
    root: Path,
    *,
    count: int,
    size: tuple[int, int] = SA1B_SIZE,
    masks: int = SA1B_MASKS,
    seed: int = 0,
) -> Path:
    """``count`` SA-1B-style pairs ``sa_<i>.jpg`` / ``sa_<i>.json`` in ``root``; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    for index in range(count):
        stem = f"sa_{index + 1}"
        (root / f"{stem}.jpg").write_bytes(encode_jpeg(photo_like(height, width, rng)))
        annotations = []
        for _ in range(masks):
            mask = random_mask(height, width, rng)
            rle = mask_utils.encode(np.asfortranarray(mask))
            counts = rle["counts"].decode("ascii")
            area = int(mask_utils.area(rle))
            annotations.append(
                {"segmentation": {"size": rle["size"], "counts": counts}, "area": area}
            )
        image = {
            "image_id": index + 1,
            "width": width,
            "height": height,
            "file_name": f"{stem}.jpg",
        }
        (root / f"{stem}.json").write_text(json.dumps({"image": image, "annotations": annotations}))
    return root


def write_webdataset_shards(
    root: Path,
    *,
    count: int,
    shards: int = 2,
    size: tuple[int, int] = WEB_SIZE,
    seed: int = 0,
) -> str:
    """``count`` samples (``jpg`` + ``txt``) over ``shards`` tar files in ``root``; returns the
    brace pattern naming them, as a recipe's ``urls`` does."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = max(1, min(shards, count))
    for shard in range(shards):
        with wds.TarWriter(str(root / f"shard-{shard:06d}.tar")) as sink:
            for index in range(shard, count, shards):
                pixels = photo_like(*size, rng)
                sink.write(
                    {"__key__": f"{index:08d}", "jpg": encode_jpeg(pixels), "txt": "a picture"}
                )
    return str(root / f"shard-{{000000..{shards - 1:06d}}}.tar")
