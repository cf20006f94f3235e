"""Export a merged run to the formats people already use: segment_anything's ``Sam``, an
open_clip-style model, and a self-describing safetensors folder (:mod:`.formats`)."""

from __future__ import annotations


class ExportError(ValueError):
    """A run that cannot be exported (or predicted from) as asked; says what is possible."""
