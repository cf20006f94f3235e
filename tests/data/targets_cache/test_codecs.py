"""Each targets-cache codec's round trip on hand-made tensors, and what each refuses."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.contracts import TargetSpec
from mergekit_vision.data.targets_cache.codecs import (
    CODECS,
    PCA,
    ROWS,
    Int8,
    codec_from_record,
    manifest_codec,
    parse_codec,
)


def round_trip(codec, target, shared=None):
    shared = shared if shared is not None else codec.fit([target])
    stored = codec.encode(target, shared)
    return codec.decode(stored[ROWS], {**shared, **stored}), stored


@pytest.mark.parametrize(("spec", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_casts_are_exact_for_representable_values(spec, dtype):
    target = (torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * 50).to(dtype)
    decoded, stored = round_trip(parse_codec(spec), target.float())
    assert stored[ROWS].dtype == dtype and set(stored) == {ROWS}
    assert decoded.dtype == torch.float32 and torch.equal(decoded, target.float())


def test_int8_error_within_half_a_step_per_channel():
    gen = torch.Generator().manual_seed(1)
    ranges = torch.tensor([0.01, 1.0, 300.0, 0.0]).reshape(1, 4, 1, 1)  # a channel all zero
    target = torch.randn(6, 4, 5, 5, generator=gen) * ranges
    decoded, stored = round_trip(Int8(), target)
    codes, scale = stored[ROWS], stored["scale"]
    assert codes.dtype == torch.int8 and codes.shape == target.shape and scale.shape == (4,)
    assert int(codes.abs().max()) == 127
    expected_scale = target.abs().amax(dim=(0, 2, 3)) / 127
    torch.testing.assert_close(scale[:3], expected_scale[:3])
    error = (decoded - target).abs()
    bound = (scale / 2).reshape(1, 4, 1, 1) * (1 + 1e-5) + 1e-12
    assert bool((error <= bound).all()), float((error / bound).max())
    assert bool((decoded[:, 3] == 0).all())
    # a value on the grid comes back exactly
    on_grid = torch.tensor([[-127.0, -3.0, 0.0, 5.0, 127.0]]).T * 0.5  # [5, 1]: channel 0
    decoded, stored = round_trip(Int8(), on_grid)
    assert float(stored["scale"]) == 0.5 and torch.equal(decoded, on_grid)


def test_int8_per_channel_of_vectors():
    target = torch.tensor([[1.0, -200.0], [-0.5, 100.0], [0.25, 50.0]])  # [n, C]
    decoded, stored = round_trip(Int8(), target)
    torch.testing.assert_close(stored["scale"], torch.tensor([1.0, 200.0]) / 127)
    assert bool(((decoded - target).abs() <= stored["scale"] / 2 + 1e-6).all())


def low_rank_maps(rank: int, channels: int) -> torch.Tensor:
    """``[4, C, 3, 2]`` feature maps whose vectors are ``mean + rank`` directions."""
    gen = torch.Generator().manual_seed(2)
    mean = torch.randn(channels, generator=gen) * 3
    directions = torch.randn(rank, channels, generator=gen)
    coefficients = torch.randn(4 * 3 * 2, rank, generator=gen) * 10
    vectors = coefficients @ directions + mean
    return vectors.reshape(4, 3, 2, channels).movedim(-1, 1)


def test_pca_is_exact_at_rank_k():
    target = low_rank_maps(rank=3, channels=16)
    codec = PCA(3)
    decoded, stored = round_trip(codec, target)
    assert stored[ROWS].dtype == torch.float16 and stored[ROWS].shape == (4, 3, 3, 2)
    assert codec.decoded_shape(tuple(stored[ROWS].shape), codec.fit([target])) == target.shape
    # exact but for the fp16 rounding of coefficients of magnitude ~ 50 (2^-11 relative)
    scale = float(stored[ROWS].float().abs().max())
    torch.testing.assert_close(decoded, target, rtol=0, atol=scale * 2**-10)
    lossy, _ = round_trip(PCA(2), target)
    assert float((lossy - target).abs().max()) > 100 * scale * 2**-10


def test_pca_error_is_the_dropped_energy():
    """Vectors +-s_i q_i (q orthonormal): mean 0, variance along q_i is s_i^2 / 5; keeping the
    two largest leaves the squared error sum 2 (3^2 + 2^2 + 1^2) = 28."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(3)))
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    vectors = torch.cat([s[:, None] * q.T, -s[:, None] * q.T]).float()  # [10, 5]: rows +-s_i q_i
    codec = PCA(2)
    shared = codec.fit([vectors])
    torch.testing.assert_close(shared["mean"], torch.zeros(5), rtol=0, atol=1e-6)
    projection = shared["basis"].T @ shared["basis"]  # onto the two largest directions
    torch.testing.assert_close(projection, q[:, :2] @ q[:, :2].T, rtol=0, atol=1e-5)
    decoded, _ = round_trip(codec, vectors, shared)
    assert float(((decoded - vectors) ** 2).sum()) == pytest.approx(28.0, rel=1e-3)


def test_pca_fits_over_batches_as_over_one():
    target = low_rank_maps(rank=5, channels=8)
    whole, parts = PCA(4).fit([target]), PCA(4).fit([target[:1], target[1:3], target[3:]])
    for name in ("basis", "mean"):
        torch.testing.assert_close(whole[name], parts[name], rtol=0, atol=1e-5)


def test_refusals():
    mask_logits = TargetSpec(("B", "N", "K", "4h", "4w"), needs_prompts=True)
    refusal = PCA(8).refusal(mask_logits)
    assert refusal is not None and "use int8" in refusal and "'N'" in refusal
    assert PCA(8).refusal(TargetSpec(("B", 32, "h", "w"))) is None
    assert "32 channels" in PCA(33).refusal(TargetSpec(("B", 32)))
    for name in ("fp16", "bf16", "int8"):
        assert parse_codec(name).refusal(mask_logits) is None


def test_parse_and_records():
    assert sorted(CODECS) == ["bf16", "fp16", "int8", "pca"]
    codec = parse_codec("pca:96")
    assert isinstance(codec, PCA) and codec.components == 96 and str(codec) == "pca:96"
    for spec in ("fp16", "bf16", "int8", "pca:96"):
        record = parse_codec(spec).record()
        assert codec_from_record(record).record() == record
    with pytest.raises(ValueError, match="codecs: fp16, bf16, int8, pca:K"):
        parse_codec("int4")
    with pytest.raises(ValueError, match="e.g. pca:96"):
        parse_codec("pca")
    with pytest.raises(ValueError, match="takes no argument"):
        parse_codec("int8:2")
    with pytest.raises(ValueError, match="unknown codec 'int4'; this version reads fp16"):
        codec_from_record({"name": "int4"})
    # caches written before codecs name a dtype
    assert manifest_codec({"dtype": "bfloat16"}) == {"name": "bf16"}
    assert manifest_codec({"codec": {"name": "int8"}, "dtype": "float16"}) == {"name": "int8"}
