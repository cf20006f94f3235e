"""Write toy-world scenes to the real on-disk formats the dataset plugins read.

Each ``export_<format>`` generates scenes ``0..num_samples-1`` of ``seed`` and writes them in one
format; :func:`export_all` writes every format from one pass over the scenes plus a manifest.
The scene ``key`` is its zero-padded index. Images are PNG everywhere (lossless), so a loader
reading an export back sees exactly the generated pixels.

| format          | written by              | read by the dataset plugin  |
| --------------- | ----------------------- | --------------------------- |
| image folder    | :func:`export_image_folder`  | ``image_folder``       |
| WebDataset tars | :func:`export_webdataset`    | ``webdataset``         |
| COCO instances  | :func:`export_coco`          | ``coco``               |
| VOC semantic    | :func:`export_voc`           | ``voc``                |
| ImageFolder cls | :func:`export_image_classes` | ``image_classes``      |
| Karpathy JSON   | :func:`export_captions`      | ``captions``           |

:func:`export_probe_split` writes the data of frozen-feature probes (a classification folder and
a VOC set of one seed). Use a seed different from the one a toy run trains on, so evaluation
scenes are unseen.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor

from mergekit_vision.data.toy_world.caption_set import CaptionsWriter
from mergekit_vision.data.toy_world.world import Scene, ToyWorldConfig, class_names, generate_scene

MANIFEST_NAME = "toy_world.json"
_FILES_PER_FOLDER = 1000  # image_folder: keep folders small for file browsers and filesystems


def encode_png(image: Tensor) -> bytes:
    """``uint8 [3, H, W]`` -> PNG bytes (fast, low compression: these files are scratch data)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (768 values): class ``i``'s colour spreads the bits of ``i``
    over the high bits of R, G and B, so neighbouring labels get distinct colours."""
    palette = []
    for label in range(256):
        rgb, value = [0, 0, 0], label
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.extend(rgb)
    return palette


class _Writer(Protocol):
    def add(self, key: str, scene: Scene, png: bytes) -> None: ...

    def close(self) -> dict[str, Any]:
        """Finish writing; return the ``{"type": ..., "params": ...}`` that reads it back."""
        ...


class _ImageFolderWriter:
    def __init__(self, root: Path):
        self.root, self.count = root, 0

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        folder = self.root / f"{self.count // _FILES_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{key}.png").write_bytes(png)
        self.count += 1

    def close(self) -> dict[str, Any]:
        return {"type": "image_folder", "params": {"root": str(self.root)}}


class _WebDatasetWriter:
    """Shards ``shard-NNNNNN.tar`` of ``{key}.png``, ``{key}.txt`` (caption), ``{key}.json``."""

    def __init__(self, root: Path, *, names: list[str], samples_per_shard: int):
        self.root, self.names, self.samples_per_shard = root, names, samples_per_shard
        self.count, self.shards = 0, 0
        self.sink: wds.TarWriter | None = None
        root.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        if self.count % self.samples_per_shard == 0:
            self._next_shard()
        annotation = {
            "classes": scene.classes.tolist(),
            "class_names": [self.names[c] for c in scene.classes.tolist()],
            "boxes": scene.boxes.tolist(),
            "label": scene.label,
        }
        assert self.sink is not None
        self.sink.write(
            {
                "__key__": key,
                "png": png,
                "txt": scene.caption.encode("utf-8"),
                "json": json.dumps(annotation).encode("utf-8"),
            }
        )
        self.count += 1

    def _next_shard(self) -> None:
        if self.sink is not None:
            self.sink.close()
        self.sink = wds.TarWriter(str(self.root / f"shard-{self.shards:06d}.tar"))
        self.shards += 1

    def close(self) -> dict[str, Any]:
        if self.sink is not None:
            self.sink.close()
        last = max(self.shards - 1, 0)
        urls = str(self.root / f"shard-{{000000..{last:06d}}}.tar")
        return {"type": "webdataset", "params": {"urls": urls, "num_samples": self.count}}


class _CocoWriter:
    """``images/{key}.png`` and ``annotations/instances.json`` (compressed RLE masks)."""

    def __init__(self, root: Path, *, config: ToyWorldConfig):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories = [
            {"id": k + 1, "name": name, "supercategory": name.split(" ")[-1]}
            for k, name in enumerate(class_names(config))
        ]

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        (self.root / "images" / f"{key}.png").write_bytes(png)
        image_id = len(self.images) + 1
        height, width = scene.semantic.shape
        self.images.append(
            {"id": image_id, "file_name": f"{key}.png", "height": height, "width": width}
        )
        if scene.masks.shape[0] == 0:
            return
        masks = scene.masks.numpy()  # numpy: torch's bool reductions are slow on CPU
        stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
        areas = masks.reshape(len(masks), -1).sum(axis=1).tolist()
        for rle, class_id, box, area in zip(
            mask_utils.encode(stacked),
            scene.classes.tolist(),
            scene.boxes.tolist(),
            areas,
            strict=True,
        ):
            x0, y0, x1, y1 = box
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_id + 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(area),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )

    def close(self) -> dict[str, Any]:
        annotations = self.root / "annotations" / "instances.json"
        record = {
            "info": {"description": "mergekit-vision toy world"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        annotations.write_text(json.dumps(record))
        params = {"images": str(self.root / "images"), "annotations": str(annotations)}
        return {"type": "coco", "params": params}


class _VocWriter:
    """``JPEGImages/{key}.png``, palette ``SegmentationClass/{key}.png``, the split file and
    ``classes.txt`` (background first)."""

    def __init__(self, root: Path, *, config: ToyWorldConfig, split: str):
        self.root, self.split, self.ids = root, split, []
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("\n".join(["background", *class_names(config)]) + "\n")
        self.palette = voc_palette()

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        (self.root / "JPEGImages" / f"{key}.png").write_bytes(png)
        labels = Image.fromarray(scene.semantic.numpy().astype(np.uint8))
        labels.putpalette(self.palette)  # turns the greyscale image into a palette one
        labels.save(self.root / "SegmentationClass" / f"{key}.png", compress_level=1)
        self.ids.append(key)

    def close(self) -> dict[str, Any]:
        split_file = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        split_file.write_text("".join(f"{key}\n" for key in self.ids))
        return {"type": "voc", "params": {"root": str(self.root), "split": self.split}}


def _run(
    writers: list[_Writer],
    *,
    config: ToyWorldConfig,
    num_samples: int,
    seed: int,
    single_object_fraction: float = 0.0,
) -> list:
    """Generate scenes ``0..num_samples-1`` once and hand each to every writer."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if config.num_classes > 255:
        raise ValueError(f"{config.num_classes} classes do not fit 8-bit label maps (max 254)")
    for index in range(num_samples):
        scene = mixed_scene(config, seed=seed, index=index, single=single_object_fraction)
        png = encode_png(scene.image)
        for writer in writers:
            writer.add(f"{index:06d}", scene, png)
    return [writer.close() for writer in writers]


def mixed_scene(config: ToyWorldConfig, *, seed: int, index: int, single: float) -> Scene:
    """Scene ``index``: with probability ``single`` (a fixed draw per seed and index) a
    one-object, object-centric scene, else a cluttered one."""
    if single > 0 and np.random.default_rng([seed, index, 1]).uniform() < single:
        return generate_scene(config, seed=seed, index=index, num_objects=1, object_centric=True)
    return generate_scene(config, seed=seed, index=index)


def export_image_folder(
    out_dir: Path, *, config: ToyWorldConfig, num_samples: int, seed: int
) -> Path:
    """PNGs under ``out_dir/<index // 1000>/<key>.png`` (no annotations); returns ``out_dir``."""
    _run([_ImageFolderWriter(Path(out_dir))], config=config, num_samples=num_samples, seed=seed)
    return Path(out_dir)


def export_webdataset(
    out_dir: Path,
    *,
    config: ToyWorldConfig,
    num_samples: int,
    seed: int,
    samples_per_shard: int = 100,
    single_object_fraction: float = 0.0,
) -> Path:
    """Tar shards ``out_dir/shard-NNNNNN.tar``; returns ``out_dir``. Each sample holds
    ``png``, ``txt`` (the caption) and ``json`` (``classes``, ``class_names``, ``boxes`` xyxy,
    ``label``). A ``single_object_fraction`` of the scenes are one-object, object-centric ones
    (the image mix a toy CLIP is trained on, see :func:`mixed_scene`)."""
    writer = _WebDatasetWriter(
        Path(out_dir), names=class_names(config), samples_per_shard=samples_per_shard
    )
    _run(
        [writer],
        config=config,
        num_samples=num_samples,
        seed=seed,
        single_object_fraction=single_object_fraction,
    )
    return Path(out_dir)


def export_coco(out_dir: Path, *, config: ToyWorldConfig, num_samples: int, seed: int) -> Path:
    """COCO instances: ``out_dir/images/*.png`` and ``out_dir/annotations/instances.json``
    (category ``k + 1`` is class ``k``); returns ``out_dir``."""
    writer = _CocoWriter(Path(out_dir), config=config)
    _run([writer], config=config, num_samples=num_samples, seed=seed)
    return Path(out_dir)


def export_voc(
    out_dir: Path, *, config: ToyWorldConfig, num_samples: int, seed: int, split: str = "val"
) -> Path:
    """Pascal VOC segmentation layout (PNG images, palette label maps); returns ``out_dir``."""
    writer = _VocWriter(Path(out_dir), config=config, split=split)
    _run([writer], config=config, num_samples=num_samples, seed=seed)
    return Path(out_dir)


def export_image_classes(
    out_dir: Path, *, config: ToyWorldConfig, num_per_class: int, seed: int
) -> Path:
    """Single-object scenes, ``num_per_class`` of each class, as
    ``out_dir/<class name, spaces as _>/<i>.png``, and ``classes.txt`` naming the folders in
    sorted order; returns ``out_dir``. Scene ``i`` of class ``k`` is index
    ``k * num_per_class + i`` of ``seed``, with its class fixed."""
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be at least 1, got {num_per_class}")
    out_dir = Path(out_dir)
    names = class_names(config)
    folders = {name: name.replace(" ", "_") for name in names}
    for class_id, name in enumerate(names):
        folder = out_dir / folders[name]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(num_per_class):
            index = class_id * num_per_class + i
            scene = generate_scene(
                config, seed=seed, index=index, classes=[class_id], object_centric=True
            )
            (folder / f"{i:04d}.png").write_bytes(encode_png(scene.image))
    in_label_order = sorted(names, key=lambda name: folders[name])
    (out_dir / "classes.txt").write_text("\n".join(in_label_order) + "\n")
    return out_dir


def export_captions(
    out_dir: Path,
    *,
    config: ToyWorldConfig,
    num_samples: int,
    seed: int,
    captions_per_image: int = 5,
    split: str = "test",
) -> Path:
    """A captioned set in the Karpathy-split JSON layout: ``out_dir/images/{key}.png`` and
    ``out_dir/dataset_toy_world.json``, every image in ``split`` with ``captions_per_image``
    captions (:func:`~mergekit_vision.data.toy_world.caption_set.scene_captions`); returns
    ``out_dir``."""
    writer = CaptionsWriter(
        Path(out_dir), seed=seed, split=split, captions_per_image=captions_per_image
    )
    _run([writer], config=config, num_samples=num_samples, seed=seed)
    return Path(out_dir)


def export_probe_split(
    out_dir: Path, *, config: ToyWorldConfig, num_samples: int, seed: int, split: str
) -> Path:
    """One split of the frozen-feature probes' data, all from ``seed``: ``num_samples`` cluttered
    scenes in the VOC layout (split file ``split``; a segmentation probe's) and
    ``max(1, num_samples // num_classes)`` object-centric scenes per class in the ImageFolder
    layout (a classification probe's), plus the manifest, as :func:`export_all` writes it.
    A probe trains on one split and scores on another of a different seed. Returns the
    manifest's path."""
    out_dir = Path(out_dir)
    voc = _VocWriter(out_dir / "voc", config=config, split=split)
    readers = _run([voc], config=config, num_samples=num_samples, seed=seed)
    per_class = max(1, num_samples // config.num_classes)
    export_image_classes(
        out_dir / "image_classes", config=config, num_per_class=per_class, seed=seed
    )
    readers.append({"type": "image_classes", "params": {"root": str(out_dir / "image_classes")}})
    counts = {"num_samples": num_samples, "num_per_class": per_class}
    return _write_manifest(out_dir, config=config, seed=seed, counts=counts, readers=readers)


def export_all(
    out_dir: Path,
    *,
    config: ToyWorldConfig,
    num_samples: int,
    seed: int,
    num_per_class: int = 10,
    samples_per_shard: int = 100,
    num_captioned: int = 0,
) -> Path:
    """Every format in its own subfolder of ``out_dir`` plus the manifest ``toy_world.json``
    (config, seed, counts, and for each format the dataset ``type`` and ``params``, paths
    relative to ``out_dir``, that read it back). With ``num_captioned``, also the first
    ``num_captioned`` scenes as a captioned set (:func:`export_captions`, in ``captions/``).
    Returns the manifest's path."""
    out_dir = Path(out_dir)
    writers: list[_Writer] = [
        _ImageFolderWriter(out_dir / "image_folder"),
        _WebDatasetWriter(
            out_dir / "webdataset", names=class_names(config), samples_per_shard=samples_per_shard
        ),
        _CocoWriter(out_dir / "coco", config=config),
        _VocWriter(out_dir / "voc", config=config, split="val"),
    ]
    readers = _run(writers, config=config, num_samples=num_samples, seed=seed)
    export_image_classes(
        out_dir / "image_classes", config=config, num_per_class=num_per_class, seed=seed
    )
    readers.append({"type": "image_classes", "params": {"root": str(out_dir / "image_classes")}})
    counts = {"num_samples": num_samples, "num_per_class": num_per_class}
    if num_captioned:
        captions = CaptionsWriter(
            out_dir / "captions", seed=seed, split="test", captions_per_image=5
        )
        readers += _run([captions], config=config, num_samples=num_captioned, seed=seed)
        counts["num_captioned"] = num_captioned
    return _write_manifest(out_dir, config=config, seed=seed, counts=counts, readers=readers)


def _write_manifest(
    out_dir: Path,
    *,
    config: ToyWorldConfig,
    seed: int,
    counts: dict[str, int],
    readers: list[dict[str, Any]],
) -> Path:
    manifest = {
        "config": config.model_dump(mode="json"),
        "seed": seed,
        **counts,
        "class_names": class_names(config),
        "datasets": {r["type"]: _relative(r, out_dir) for r in readers},
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _relative(reader: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued params of a reader relative to ``base``."""
    params = dict(reader["params"])
    for key, value in params.items():
        if isinstance(value, str) and Path(value).is_relative_to(base):
            params[key] = Path(value).relative_to(base).as_posix()
    return {"type": reader["type"], "params": params}
