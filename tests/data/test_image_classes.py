"""The image_classes dataset plugin, on an ImageFolder layout written here."""

from pathlib import Path

import pytest
from PIL import Image

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.image_classes import ImageClassesDataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Classes ``zebra_crossing`` (2 images, one nested) and ``apple`` (1); a stray file."""
    for folder, names in (("zebra_crossing", ["b.png", "sub/a.jpg"]), ("apple", ["x.png"])):
        for name in names:
            path = tmp_path / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            grey = 10 * len(folder) + len(name)
            Image.new("RGB", (12, 6), (grey, grey, grey)).save(path)
    (tmp_path / "README.txt").write_text("not a class")
    return tmp_path


def _build(root: Path, **fields) -> ImageClassesDataset:
    params = ImageClassesDataset.Params(root=root, **fields)
    return ImageClassesDataset.build(params, resolution=8, resize="crop", seed=0)


def test_labels_follow_sorted_folder_names(root: Path) -> None:
    assert DATASETS.get("image_classes") is ImageClassesDataset
    assert not ImageClassesDataset.has_masks
    dataset = _build(root)
    assert dataset.class_names == ["apple", "zebra crossing"]
    samples = [dataset[i] for i in range(len(dataset))]
    assert [(s["key"], s["label"]) for s in samples] == [
        ("apple/x.png", 0),
        ("zebra_crossing/b.png", 1),
        ("zebra_crossing/sub/a.jpg", 1),
    ]
    assert samples[0]["image"].shape == (3, 8, 8)
    assert len(_build(root, limit=2)) == 2


def test_class_names_file_gives_readable_names(root: Path) -> None:
    (root / "classes.txt").write_text("Malus domestica\nzebra crossing (road)\n")
    assert _build(root).class_names == ["Malus domestica", "zebra crossing (road)"]
    (root / "classes.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="1 names but root has 2 class folders"):
        _build(root)


def test_missing_or_empty_roots_explain_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*one folder per class"):
        _build(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class folders"):
        _build(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no images"):
        _build(tmp_path)
