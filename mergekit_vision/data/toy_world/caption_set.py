"""Toy-world scenes as a captioned image set in the Karpathy-split JSON layout (Flickr30k's
``dataset_flickr30k.json``), read back by the ``captions`` dataset plugin; image-text retrieval
is measured on it. :func:`~mergekit_vision.data.toy_world.export.export_captions` writes it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mergekit_vision.data.toy_world.world import Scene, caption_templates

CAPTIONS_FILE = "dataset_toy_world.json"


def scene_captions(scene: Scene, *, seed: int, index: int, count: int = 5) -> list[str]:
    """``count`` captions of scene ``index`` of ``seed``, as a set's annotators give several:
    the scene's own description (:func:`~mergekit_vision.data.toy_world.world.describe`, what
    the toy CLIP learns from) first, then that description in ``count - 1`` distinct prompt
    templates (:func:`~mergekit_vision.data.toy_world.world.caption_templates`) drawn per scene,
    e.g. ``"a photo of a red circle above a blue star."``."""
    templates = caption_templates()
    if not 1 <= count <= len(templates) + 1:
        raise ValueError(f"count must lie in [1, {len(templates) + 1}], got {count}")
    rng = np.random.default_rng([seed, index, 2])  # [seed, index, 1] draws the scene mix
    picks = rng.permutation(len(templates))[: count - 1].tolist()
    body = scene.caption.removeprefix("a ")  # the templates bring their own article
    return [scene.caption, *(templates[k].format(body) for k in picks)]


class CaptionsWriter:
    """``images/{key}.png`` and ``dataset_toy_world.json``: every image in one ``split``, each
    with ``captions_per_image`` captions (:func:`scene_captions`) as Karpathy's records hold them
    (``raw``, lower-case ``tokens``, image and sentence ids)."""

    def __init__(self, root: Path, *, seed: int, split: str, captions_per_image: int):
        self.root, self.seed, self.split = root, seed, split
        self.captions_per_image = captions_per_image
        (root / "images").mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self.sentences = 0

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        (self.root / "images" / f"{key}.png").write_bytes(png)
        image_id = len(self.records)
        index = int(key)  # keys are the zero-padded scene indices
        captions = scene_captions(scene, seed=self.seed, index=index, count=self.captions_per_image)
        sentence_ids = list(range(self.sentences, self.sentences + len(captions)))
        self.sentences += len(captions)
        sentences = [
            {"tokens": re.findall(r"[a-z]+", raw.lower()), "raw": raw, "imgid": image_id,
             "sentid": sentence_id}
            for raw, sentence_id in zip(captions, sentence_ids, strict=True)
        ]  # fmt: skip
        self.records.append(
            {
                "filename": f"{key}.png",
                "imgid": image_id,
                "split": self.split,
                "sentids": sentence_ids,
                "sentences": sentences,
            }
        )

    def close(self) -> dict[str, Any]:
        annotations = self.root / CAPTIONS_FILE
        annotations.write_text(json.dumps({"images": self.records, "dataset": "toy_world"}))
        params = {
            "annotations": str(annotations),
            "images": str(self.root / "images"),
            "split": self.split,
            "max_captions_per_image": self.captions_per_image,
        }
        return {"type": "captions", "params": params}
