"""Export a merged run to the formats people already use: segment_anything's ``Sam``, an
open_clip-style model, a self-describing safetensors folder, a Hugging Face Hub folder
(``from_pretrained``) and ONNX graphs (:mod:`.formats`)."""

from __future__ import annotations


class ExportError(ValueError):
    """A run that cannot be exported (or predicted from) as asked; says what is possible."""
