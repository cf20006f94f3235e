"""Toy-world exports, each read back by the dataset plugin of its format."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from pycocotools.coco import COCO

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.captions import CaptionsDataset
from mergekit_vision.data.coco import CocoInstancesDataset
from mergekit_vision.data.image_classes import ImageClassesDataset
from mergekit_vision.data.image_folder import ImageFolderDataset
from mergekit_vision.data.toy_world.export import (
    MANIFEST_NAME,
    export_all,
    export_captions,
    export_coco,
    export_image_classes,
    export_image_folder,
    export_probe_split,
    export_voc,
    export_webdataset,
    mixed_scene,
)
from mergekit_vision.data.toy_world.world import (
    ToyWorldConfig,
    caption_templates,
    class_names,
    generate_scene,
)
from mergekit_vision.data.voc import VocSegmentationDataset
from mergekit_vision.data.webdataset_shards import WebDatasetShards

CONFIG = ToyWorldConfig(image_size=64, colours=ToyWorldConfig().colours[:3])  # 12 classes
SEED, COUNT = 11, 6


@pytest.fixture(scope="module")
def scenes() -> list:
    return [generate_scene(CONFIG, seed=SEED, index=i) for i in range(COUNT)]


def _build(cls, **params):
    return cls.build(cls.Params(**params), resolution=64, resize="pad", seed=0)


def test_image_folder_round_trip(tmp_path: Path, scenes) -> None:
    root = export_image_folder(tmp_path / "f", config=CONFIG, num_samples=COUNT, seed=SEED)
    dataset = _build(ImageFolderDataset, root=root)
    assert len(dataset) == COUNT
    for i, scene in enumerate(scenes):
        assert dataset[i]["key"] == f"000/{i:06d}.png"
        assert torch.equal(dataset[i]["image"], scene.image)


def test_webdataset_round_trip(tmp_path: Path, scenes) -> None:
    root = export_webdataset(
        tmp_path / "w", config=CONFIG, num_samples=COUNT, seed=SEED, samples_per_shard=4
    )
    assert sorted(p.name for p in root.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    urls = str(root / "shard-{000000..000001}.tar")
    samples = list(_build(WebDatasetShards, urls=urls))
    assert [s["key"] for s in samples] == [f"{i:06d}" for i in range(COUNT)]
    for sample, scene in zip(samples, scenes, strict=True):
        assert torch.equal(sample["image"], scene.image)
    raw = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    names = class_names(CONFIG)
    for record, scene in zip(raw, scenes, strict=True):
        assert record["txt"].decode() == scene.caption
        annotation = json.loads(record["json"])
        assert annotation["classes"] == scene.classes.tolist()
        assert annotation["class_names"] == [names[c] for c in scene.classes.tolist()]
        assert annotation["boxes"] == scene.boxes.tolist() and annotation["label"] == scene.label


def test_coco_round_trip(tmp_path: Path, scenes) -> None:
    root = export_coco(tmp_path / "c", config=CONFIG, num_samples=COUNT, seed=SEED)
    annotations = root / "annotations" / "instances.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == class_names(CONFIG)
    dataset = _build(CocoInstancesDataset, images=root / "images", annotations=annotations)
    for i, scene in enumerate(scenes):
        sample = dataset[i]
        assert torch.equal(sample["image"], scene.image)
        assert torch.equal(sample["masks"], scene.masks)
        anns = coco.loadAnns(sorted(coco.getAnnIds(imgIds=[i + 1])))
        assert [a["category_id"] - 1 for a in anns] == scene.classes.tolist()
        for ann, box, mask in zip(anns, scene.boxes.tolist(), scene.masks, strict=True):
            x0, y0, x1, y1 = box
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["area"] == mask.sum().item() and ann["iscrowd"] == 0


def test_voc_round_trip(tmp_path: Path, scenes) -> None:
    root = export_voc(tmp_path / "v", config=CONFIG, num_samples=COUNT, seed=SEED)
    label_png = Image.open(root / "SegmentationClass" / "000000.png")
    assert label_png.mode == "P"
    assert label_png.getpalette()[255 * 3 : 256 * 3] == [224, 224, 192]  # VOC's ignore colour
    values = set(np.unique(np.asarray(label_png)).tolist())
    assert values == {0, *(c + 1 for c in scenes[0].classes.tolist())}
    dataset = _build(VocSegmentationDataset, root=root)
    assert dataset.class_names == ["background", *class_names(CONFIG)]
    for i, scene in enumerate(scenes):
        assert dataset[i]["key"] == f"{i:06d}"
        assert torch.equal(dataset[i]["image"], scene.image)
        assert torch.equal(dataset[i]["semantic"], scene.semantic)


def test_image_classes_round_trip(tmp_path: Path) -> None:
    root = export_image_classes(tmp_path / "k", config=CONFIG, num_per_class=2, seed=SEED)
    assert (root / "red_circle" / "0001.png").is_file()
    dataset = _build(ImageClassesDataset, root=root)
    names = class_names(CONFIG)
    assert len(dataset) == 2 * len(names) and sorted(dataset.class_names) == sorted(names)
    for i in range(len(dataset)):
        sample = dataset[i]
        name = dataset.class_names[sample["label"]]
        class_id, within = names.index(name), int(Path(sample["key"]).stem)
        scene = generate_scene(
            CONFIG,
            seed=SEED,
            index=class_id * 2 + within,
            classes=[class_id],
            object_centric=True,  # classification images are object-centric
        )
        assert Path(sample["key"]).parent.name == name.replace(" ", "_")
        assert torch.equal(sample["image"], scene.image)


def test_export_all_writes_a_manifest_that_reads_every_format_back(tmp_path: Path) -> None:
    manifest_path = export_all(tmp_path, config=CONFIG, num_samples=3, seed=SEED, num_per_class=1)
    assert manifest_path == tmp_path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    assert ToyWorldConfig(**manifest["config"]) == CONFIG
    assert manifest["seed"] == SEED and manifest["num_samples"] == 3
    expected = {"image_folder": 3, "webdataset": 3, "coco": 3, "voc": 3, "image_classes": 12}
    assert set(manifest["datasets"]) == set(expected)
    for name, reader in manifest["datasets"].items():
        params = {
            k: str(tmp_path / v) if k in ("root", "images", "annotations", "urls") else v
            for k, v in reader["params"].items()
        }
        cls = DATASETS.get(reader["type"])
        dataset = cls.build(cls.Params(**params), resolution=32, resize="crop", seed=0)
        samples = (
            list(dataset) if name == "webdataset" else [dataset[i] for i in range(len(dataset))]
        )
        assert len(samples) == expected[name], name
        assert samples[0]["image"].shape == (3, 32, 32)


def test_webdataset_mixes_in_object_centric_scenes(tmp_path):
    """CLIP distillation shards follow the toy CLIP's image mix: a share of one-object scenes
    with object-centric sizes, the rest the same cluttered scenes as without the mix."""
    count = 40
    root = export_webdataset(
        tmp_path / "w", config=CONFIG, num_samples=count, seed=SEED, single_object_fraction=0.5
    )
    raw = list(wds.WebDataset(str(root / "shard-000000.tar"), shardshuffle=False))
    singles = 0
    for index, record in enumerate(raw):
        scene = mixed_scene(CONFIG, seed=SEED, index=index, single=0.5)
        assert record["txt"].decode() == scene.caption
        cluttered = generate_scene(CONFIG, seed=SEED, index=index)
        if scene.caption != cluttered.caption:
            singles += 1
            assert len(json.loads(record["json"])["classes"]) == 1
            side = scene.boxes[0, 2:] - scene.boxes[0, :2]
            assert side.max() >= CONFIG.centric_size[0] * CONFIG.image_size * 0.7
    assert 10 <= singles <= 30


def test_captions_follow_the_karpathy_layout_and_read_back(tmp_path: Path, scenes) -> None:
    root = export_captions(tmp_path / "cap", config=CONFIG, num_samples=COUNT, seed=SEED)
    document = json.loads((root / "dataset_toy_world.json").read_text())
    assert set(document) == {"images", "dataset"} and len(document["images"]) == COUNT
    sentence_ids = []
    for imgid, (record, scene) in enumerate(zip(document["images"], scenes, strict=True)):
        assert set(record) == {"filename", "imgid", "split", "sentids", "sentences"}
        assert (record["filename"], record["imgid"], record["split"]) == (
            f"{imgid:06d}.png",
            imgid,
            "test",
        )
        raws = [s["raw"] for s in record["sentences"]]
        assert len(set(raws)) == 5 and raws[0] == scene.caption
        fills = {t.format(scene.caption.removeprefix("a ")) for t in caption_templates()}
        assert set(raws[1:]) <= fills
        for sentence in record["sentences"]:
            assert set(sentence) == {"tokens", "raw", "imgid", "sentid"}
            assert sentence["imgid"] == imgid and " ".join(sentence["tokens"]) in sentence["raw"]
        assert record["sentids"] == [s["sentid"] for s in record["sentences"]]
        sentence_ids += record["sentids"]
    assert sentence_ids == list(range(5 * COUNT))
    params = {"annotations": root / "dataset_toy_world.json", "images": root / "images"}
    dataset = _build(DATASETS.get("captions"), **params)
    assert isinstance(dataset, CaptionsDataset) and len(dataset) == COUNT
    for i, scene in enumerate(scenes):
        sample = dataset[i]
        assert torch.equal(sample["image"], scene.image)
        assert sample["captions"] == [s["raw"] for s in document["images"][i]["sentences"]]
    capped = _build(CaptionsDataset, **params, max_captions_per_image=2)[0]["captions"]
    assert capped == [s["raw"] for s in document["images"][0]["sentences"][:2]]


def test_export_all_adds_the_captioned_set_only_when_asked(tmp_path: Path) -> None:
    manifest_path = export_all(
        tmp_path, config=CONFIG, num_samples=3, seed=SEED, num_per_class=1, num_captioned=2
    )
    manifest = json.loads(manifest_path.read_text())
    assert manifest["num_captioned"] == 2
    reader = manifest["datasets"]["captions"]
    assert reader == {
        "type": "captions",
        "params": {
            "annotations": "captions/dataset_toy_world.json",
            "images": "captions/images",
            "split": "test",
            "max_captions_per_image": 5,
        },
    }
    params = {**reader["params"]}
    params["annotations"] = tmp_path / params["annotations"]
    params["images"] = tmp_path / params["images"]
    dataset = _build(CaptionsDataset, **params)
    assert [dataset[i]["key"] for i in range(len(dataset))] == ["000000.png", "000001.png"]
    plain = export_all(tmp_path / "plain", config=CONFIG, num_samples=3, seed=SEED, num_per_class=1)
    assert "captions" not in json.loads(plain.read_text())["datasets"]
    assert not (tmp_path / "plain" / "captions").exists()


def _read_split(manifest_path: Path) -> dict[str, list[dict]]:
    """Every sample of each dataset a probe split's manifest lists, read through its plugin."""
    manifest, out = json.loads(manifest_path.read_text()), {}
    for name, reader in manifest["datasets"].items():
        params = {**reader["params"], "root": manifest_path.parent / reader["params"]["root"]}
        dataset = _build(DATASETS.get(reader["type"]), **params)
        out[name] = [dataset[i] for i in range(len(dataset))]
    return out


def test_probe_splits_read_back_with_disjoint_scenes(tmp_path: Path) -> None:
    train = export_probe_split(
        tmp_path / "probe_train", config=CONFIG, num_samples=14, seed=SEED + 1, split="train"
    )
    heldout = export_probe_split(
        tmp_path / "probe_heldout", config=CONFIG, num_samples=12, seed=SEED + 2, split="val"
    )
    manifest = json.loads(train.read_text())
    assert manifest["seed"] == SEED + 1 and manifest["num_per_class"] == 1  # 14 // 12 classes
    assert manifest["datasets"]["voc"]["params"] == {"root": "voc", "split": "train"}
    splits = {"train": _read_split(train), "heldout": _read_split(heldout)}
    assert {k: len(v) for k, v in splits["train"].items()} == {"voc": 14, "image_classes": 12}
    assert {k: len(v) for k, v in splits["heldout"].items()} == {"voc": 12, "image_classes": 12}
    voc_scene = generate_scene(CONFIG, seed=SEED + 1, index=3)
    assert torch.equal(splits["train"]["voc"][3]["semantic"], voc_scene.semantic)
    labels = [s["label"] for s in splits["heldout"]["image_classes"]]
    assert sorted(labels) == list(range(12))  # one object-centric scene per class
    pixels = {
        role: {s["image"].numpy().tobytes() for samples in split.values() for s in samples}
        for role, split in splits.items()
    }
    assert len(pixels["train"]) == 26 and len(pixels["heldout"]) == 24
    assert not pixels["train"] & pixels["heldout"]
