"""The released Segment Anything checkpoints by name: official file names, URL and SHA-256.

Kirillov et al., "Segment Anything", ICCV 2023 (arXiv 2304.02643): the files segment_anything's
README links for ``sam_model_registry``'s ``vit_b``, ``vit_l`` and ``vit_h``. Each is checked
against its SHA-256 before anything in it is read; a name resolves to
``$HF_HOME/segment_anything/<file>`` (see :mod:`mergekit_vision.hub`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from mergekit_vision.hub import ReleaseFile, WeightsName, resolve, verify_sha256
from mergekit_vision.sam.variants import SamVariant

SAM_RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CACHE_FOLDER = "segment_anything"


class SamRelease(NamedTuple):
    filename: str
    sha256: str


SAM_RELEASES: Mapping[SamVariant, SamRelease] = MappingProxyType(
    {
        "vit_b": SamRelease(
            "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        "vit_l": SamRelease(
            "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        "vit_h": SamRelease(
            "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
    }
)
"""Each released checkpoint's file name and SHA-256."""


def sam_release(
    variant: SamVariant, *, field: str = "pretrained", sha256: str | None = None
) -> WeightsName:
    """The official checkpoint of ``variant`` as named weights, checked against its SHA-256
    (``sha256`` overrides the official digest, for a file republished under the same name)."""
    release = SAM_RELEASES[variant]
    return WeightsName(
        field=field,
        name=variant,
        what="SAM release",
        source=ReleaseFile(url=SAM_RELEASE_URL + release.filename, folder_name=SAM_CACHE_FOLDER),
        sha256=sha256 or release.sha256,
    )


def check_sam_weights(
    variant: str, *, checkpoint: Path | None, pretrained: SamVariant | None
) -> None:
    """Refuse params that name two weights, or a release that is not their ``variant``."""
    if checkpoint is not None and pretrained is not None:
        raise ValueError("give checkpoint (a local file) or pretrained (a release), not both")
    if pretrained is not None and variant not in ("custom", pretrained):
        raise ValueError(
            f"pretrained {pretrained!r} is the {pretrained} release but variant is {variant!r}; "
            f"set variant: {pretrained}"
        )


def sam_weights_file(
    *, checkpoint: Path | None, pretrained: SamVariant | None, sha256: str | None
) -> Path | None:
    """The SAM weights file params name: the release, resolved through the cache (its SHA-256
    checked), or the local checkpoint (checked when ``sha256`` is given); None for neither."""
    if pretrained is not None:
        return resolve(sam_release(pretrained, sha256=sha256))
    if checkpoint is not None and sha256 is not None:
        verify_sha256(
            checkpoint,
            sha256,
            what="SAM checkpoint",
            remedy="point checkpoint at the intended file, or correct sha256",
        )
    return checkpoint
