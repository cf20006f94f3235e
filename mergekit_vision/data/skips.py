"""Samples that cannot be decoded are skipped, not fatal.

Web-scale image sets (LAION, DataComp, SA-1B mirrors) always hold some broken files: zero-byte
downloads, truncated JPEGs, HTML error pages saved as ``.png``, annotations cut short. A dataset
plugin reads each of its files inside :func:`decoding`, which turns the library's error into an
:class:`UndecodableSampleError` naming the file; the plugin then serves a readable sample in its
place and reports the skip with it:

- map-style datasets (:func:`readable_sample`) serve a substitute index, chosen by a fixed
  stride of about 0.62 x the length so that a run of broken neighbours (one bad download batch in
  a sorted folder) is not read again and again for each of its members;
- streams (:func:`readable_stream`) serve the next decodable sample.

The report travels *with the sample*, as a list of ``{"path", "reason"}`` records under
:data:`SKIPPED`, and :func:`~mergekit_vision.data.base.collate_samples` joins the lists of a batch.
So it works in DataLoader worker processes, where a global counter would stay in the worker, and
through keyed views, which copy the sample dict. The engine counts and logs the records.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from mergekit_vision.data.base import SKIPPED

# What decoding a broken file raises: PIL (OSError, SyntaxError from a bad PNG chunk, struct.error,
# DecompressionBombError), json (ValueError), a malformed record (KeyError, TypeError, IndexError,
# AttributeError),
# pycocotools' RLE decoder (ValueError, TypeError, OverflowError). Not RuntimeError: torch's
# errors are bugs or resources, not data.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    AttributeError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    OverflowError,
    SyntaxError,
    struct.error,
    Image.DecompressionBombError,
)


class UndecodableSampleError(ValueError):
    """A sample's file (image, mask, annotation) cannot be decoded; names the file and why."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"cannot decode '{path}': {reason}")

    def record(self) -> dict[str, str]:
        """The skip record a sample carries under :data:`SKIPPED`."""
        return {"path": self.path, "reason": self.reason}


class NoReadableSampleError(ValueError):
    """Not one sample of a dataset can be decoded (the message gives an example)."""


@contextmanager
def decoding(path: Path | str, *, part: str = "") -> Iterator[None]:
    """Errors of decoding ``path`` inside the block become :class:`UndecodableSampleError`;
    ``part`` names what of the sample was being decoded when that is not the file itself (e.g.
    ``"annotations"``)."""
    try:
        yield
    except UndecodableSampleError:
        raise
    except DECODE_ERRORS as err:
        reason = _reason(err)
        raise UndecodableSampleError(str(path), f"{part}: {reason}" if part else reason) from err


def _reason(err: BaseException) -> str:
    err = err.__cause__ or err  # the library's own words, not a wrapper's that repeats the path
    # PIL names an in-memory file (a WebDataset sample) by its address, different in every run.
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "its bytes", str(err))
    text = text or type(err).__name__
    return text if isinstance(err, OSError | ValueError) else f"{type(err).__name__}: {text}"


def with_skipped(sample: dict[str, Any], records: list[dict[str, str]]) -> dict[str, Any]:
    """``sample`` carrying ``records`` (besides any it already carries)."""
    if records:
        sample[SKIPPED] = [*sample.get(SKIPPED, ()), *records]
    return sample


def substitutes(index: int, length: int) -> Iterator[int]:
    """``index``, then every other index of ``range(length)`` once, ``stride`` apart."""
    stride = max(1, round(length * 0.6180339887))  # the golden ratio: far from any neighbour
    while math.gcd(stride, length) != 1:  # coprime: the walk visits every index once
        stride += 1
    return ((index + k * stride) % length for k in range(length))


def readable_sample(
    read: Callable[[int], dict[str, Any]], index: int, *, length: int, name: str
) -> dict[str, Any]:
    """``read(index)``, or, when that sample cannot be decoded, the first substitute that can,
    carrying the skipped samples' records. ``name`` names the dataset in errors."""
    if not -length <= index < length:
        raise IndexError(f"{name}: index {index} out of range [0, {length})")
    skipped: list[dict[str, str]] = []
    for candidate in substitutes(index % length, length):
        try:
            sample = read(candidate)
        except UndecodableSampleError as err:
            skipped.append(err.record())
            continue
        return with_skipped(sample, skipped)
    raise NoReadableSampleError(
        f"{name}: none of its {length} samples can be decoded, e.g. '{skipped[0]['path']}': "
        f"{skipped[0]['reason']}"
    )


def readable_stream(
    items: Iterable[Any], decode: Callable[[Any], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """``decode`` of each item, the undecodable ones skipped; their records ride with the next
    decodable sample, or with the last one when the stream ends in broken items (so one sample is
    held back until the next is decoded)."""
    held: dict[str, Any] | None = None
    skipped: list[dict[str, str]] = []
    for item in items:
        try:
            sample = decode(item)
        except UndecodableSampleError as err:
            skipped.append(err.record())
            continue
        if held is not None:
            yield held
        held, skipped = with_skipped(sample, skipped), []
    if held is not None:
        yield with_skipped(held, skipped)
