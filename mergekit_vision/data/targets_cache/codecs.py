"""How a targets cache stores its target tensors: ``fp16``, ``bf16``, ``int8`` and ``pca:K``.

A codec turns the float targets of one shard and resolution, ``[n, C, ...]`` (row ``j`` one
sample view; axis 1 the feature axis of the :class:`~mergekit_vision.contracts.TargetSpec`
convention), into stored tensors, and back. What it stores (docs/cache.md):

- ``rows``: one row per sample view, read row by row in training (``{R}.target`` in the shard);
- per-shard tensors beside them (``{R}.target.<name>``: int8's scales);
- shared tensors, fitted once per resolution before the first shard from the first
  ``fit_samples`` samples (``{R}.target.<name>`` in the cache's ``codec.safetensors``: the PCA
  basis and mean).

The codecs are a closed set of storage formats, picked by ``vmerge cache --codec`` and recorded in
the manifest, so they are named in :data:`CODECS` here rather than registered as recipe plugins: a
cache must read back anywhere the package is installed, which a codec of another package would
break (export formats are kept the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mergekit_vision.contracts import TargetSpec
from mergekit_vision.errors import BuildError

ROWS = "rows"
STATE_FILE = "codec.safetensors"


class CodecError(BuildError):
    """A codec that cannot store a task's target; the message says which codec can."""

    def __init__(self, task: str, message: str):
        super().__init__(f"tasks.{task}.target", ValueError(message))


class Codec:
    """Encodes a shard's float targets ``[n, C, ...]`` into stored tensors and decodes rows back.

    ``staging_dtype`` is what the writer holds a shard's targets in before :meth:`encode`
    (the stored dtype where encoding is a cast, so a shard never needs float32 memory then);
    ``fit_samples`` > 0 asks the writer for a :meth:`fit` before the first shard.
    """

    name: ClassVar[str]
    staging_dtype: ClassVar[torch.dtype] = torch.float32
    fit_samples: int = 0

    @classmethod
    def from_arg(cls, arg: str | None) -> Codec:
        if arg is not None:
            raise ValueError(f"codec {cls.name!r} takes no argument, got {cls.name}:{arg}")
        return cls()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Codec:
        return cls()

    def record(self) -> dict[str, Any]:
        """The manifest's description, from which :func:`codec_from_record` rebuilds it."""
        return {"name": self.name}

    def __str__(self) -> str:
        return self.name

    def refusal(self, spec: TargetSpec) -> str | None:
        """Why this codec cannot store a target of ``spec``, or None if it can."""
        return None

    def fit(self, batches: Iterable[Tensor]) -> dict[str, Tensor]:
        """Shared tensors fitted on float target batches ``[b, C, ...]`` of one resolution."""
        return {}

    def encode(self, target: Tensor, shared: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{ROWS: [n, ...], <per-shard name>: tensor}`` for a shard's targets ``[n, C, ...]``."""
        raise NotImplementedError

    def decode(self, rows: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        """Float32 targets ``[m, C, ...]`` from stored ``rows`` and the shard's and shared
        tensors ``state``."""
        raise NotImplementedError

    def decoded_shape(self, stored: tuple[int, ...], shared: Mapping[str, Tensor]) -> tuple:
        """The shape of the targets stored as ``rows`` of shape ``stored``."""
        return stored


class _Cast(Codec):
    stored_dtype: ClassVar[torch.dtype]

    def encode(self, target: Tensor, shared: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {ROWS: target.to(self.stored_dtype).contiguous()}

    def decode(self, rows: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        return rows.float()


class Float16(_Cast):
    """IEEE half precision: 2 bytes a value, 11 significant bits (the default)."""

    name = "fp16"
    staging_dtype = stored_dtype = torch.float16


class BFloat16(_Cast):
    """bfloat16: 2 bytes a value, float32's range, 8 significant bits."""

    name = "bf16"
    staging_dtype = stored_dtype = torch.bfloat16


class Int8(Codec):
    """Symmetric int8 with one float32 scale per channel (axis 1) and shard.

    ``scale_c = max |x[:, c, ...]| / 127`` over the shard's rows, codes ``round(x / scale_c)``;
    every value is restored within ``scale_c / 2``. Any target fits: for SAM's mask logits
    ``[n, N, K, 4h, 4w]`` axis 1 is the prompt slot, so each slot of the shard has its scale.
    """

    name = "int8"

    def encode(self, target: Tensor, shared: Mapping[str, Tensor]) -> dict[str, Tensor]:
        others = [d for d in range(target.ndim) if d != 1]
        amax = target.detach().float().abs().amax(dim=others)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        codes = torch.round(target.float() / _along_axis1(scale, target.ndim))
        return {ROWS: codes.clamp_(-127, 127).to(torch.int8).contiguous(), "scale": scale}

    def decode(self, rows: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        return rows.float() * _along_axis1(state["scale"].float(), rows.ndim)


class PCA(Codec):
    """The ``K`` leading principal components of the feature axis, as fp16 coefficients.

    Fitted per resolution on the first ``fit_samples`` samples (every view; every position of a
    feature map is a vector): mean ``mu [C]`` and the top-``K`` eigenvectors ``U_K [K, C]`` of
    the covariance (Pearson 1901), stored once in ``codec.safetensors``. A target ``x`` is stored
    as ``c = (x - mu) U_K^T`` and read as ``c U_K + mu``: exact for data of rank <= ``K`` about
    its mean (to fp16 rounding of ``c``), otherwise the loss is the energy of the dropped
    components. PHI-S's Hadamard rotation (Ranzinger et al., arXiv 2410.01680) of the kept ``K``
    coefficients would span the same subspace, so it changes nothing stored in fp16.

    Args:
        components: ``K``, at most the target's width ``C``.
        fit_samples: samples whose targets fit the basis.
    """

    name = "pca"

    def __init__(self, components: int, *, fit_samples: int = 1024):
        if components < 1 or fit_samples < 1:
            raise ValueError(f"pca needs K >= 1 and fit_samples >= 1: {components}, {fit_samples}")
        self.components, self.fit_samples = components, fit_samples

    @classmethod
    def from_arg(cls, arg: str | None) -> Codec:
        if arg is None or not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"pca needs a number of components, e.g. pca:96; got pca:{arg or ''}")
        return cls(int(arg))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Codec:
        return cls(int(record["components"]), fit_samples=int(record["fit_samples"]))

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "components": self.components,
            "fit_samples": self.fit_samples,
            "state": STATE_FILE,
        }

    def __str__(self) -> str:
        return f"pca:{self.components}"

    def refusal(self, spec: TargetSpec) -> str | None:
        width = spec.shape[1] if len(spec.shape) > 1 else None
        if not isinstance(width, int):
            return (
                f"{self} keeps components of a feature axis, and a target of shape "
                f"{list(spec.shape)} has none (axis 1 is {width!r}); use int8, fp16 or bf16"
            )
        if self.components > width:
            return f"{self} keeps more components than the target's {width} channels"
        return None

    def fit(self, batches: Iterable[Tensor]) -> dict[str, Tensor]:
        count, total, outer = 0, None, None
        for batch in batches:  # float64 running sums: a fit sample may not fit in memory
            flat = _channels_last(batch).double()
            total = flat.sum(0) if total is None else total + flat.sum(0)
            outer = flat.T @ flat if outer is None else outer + flat.T @ flat
            count += flat.shape[0]
        if total is None or outer is None:
            raise ValueError("pca: no targets to fit the basis on (an empty dataset?)")
        if self.components > total.numel():
            raise ValueError(f"{self} keeps more components than the {total.numel()} channels")
        mean = total / count
        _, vectors = torch.linalg.eigh(outer / count - torch.outer(mean, mean))
        basis = vectors[:, -self.components :].flip(1).T  # [K, C], largest variance first
        # eigh's signs are arbitrary: fix each row's largest entry positive for a stable file
        signs = basis.gather(1, basis.abs().argmax(1, keepdim=True)).sign()
        basis = basis * torch.where(signs == 0, 1.0, signs)
        return {"basis": basis.float().contiguous(), "mean": mean.float().contiguous()}

    def encode(self, target: Tensor, shared: Mapping[str, Tensor]) -> dict[str, Tensor]:
        basis, mean = shared["basis"].float(), shared["mean"].float()
        coefficients = (target.float().movedim(1, -1) - mean) @ basis.T
        return {ROWS: coefficients.movedim(-1, 1).to(torch.float16).contiguous()}

    def decode(self, rows: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        basis, mean = state["basis"].float(), state["mean"].float()
        return (rows.float().movedim(1, -1) @ basis + mean).movedim(-1, 1)

    def decoded_shape(self, stored: tuple[int, ...], shared: Mapping[str, Tensor]) -> tuple:
        return (stored[0], int(shared["basis"].shape[1]), *stored[2:])


CODECS: dict[str, type[Codec]] = {c.name: c for c in (Float16, BFloat16, Int8, PCA)}
CODEC_SPECS = "fp16, bf16, int8, pca:K"
LEGACY_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}  # manifests before codecs had `dtype`


def parse_codec(spec: str) -> Codec:
    """The codec named ``fp16``, ``bf16``, ``int8`` or ``pca:K``."""
    name, _, arg = spec.partition(":")
    if name not in CODECS:
        raise ValueError(f"unknown codec {spec!r}; codecs: {CODEC_SPECS} (e.g. pca:96)")
    return CODECS[name].from_arg(arg or None)


def codec_from_record(record: Mapping[str, Any]) -> Codec:
    """The codec a manifest's ``codec`` record describes."""
    if record.get("name") not in CODECS:
        raise ValueError(f"unknown codec {record.get('name')!r}; this version reads {CODEC_SPECS}")
    return CODECS[record["name"]].from_record(record)


def manifest_codec(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's codec record (caches written before codecs name a ``dtype``)."""
    if "codec" in manifest:
        return dict(manifest["codec"])
    return {"name": LEGACY_DTYPES.get(manifest.get("dtype", "float16"), "fp16")}


def state_of(tensors: Mapping[str, Tensor], field: str) -> dict[str, Tensor]:
    """The tensors ``{field}.<name>`` of ``tensors`` by ``<name>``."""
    prefix = field + "."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _along_axis1(values: Tensor, ndim: int) -> Tensor:
    return values.reshape(1, -1, *([1] * (ndim - 2)))


def _channels_last(batch: Tensor) -> Tensor:
    """``[b, C, ...]`` -> ``[b * ..., C]``: every position's feature vector."""
    return batch.movedim(1, -1).reshape(-1, batch.shape[1])
