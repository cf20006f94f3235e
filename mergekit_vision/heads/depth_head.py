"""A light DPT decoder: the student's tokens reassembled at four scales, fused, and read out as a
dense map (a depth teacher's relative depth)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mergekit_vision.contracts import (
    HEADS,
    Head,
    Prompts,
    Student,
    StudentFeatures,
    Teacher,
    block_indices,
)
from mergekit_vision.heads.adaptor import spatial_target_shape
from mergekit_vision.registry import PluginParams, TeacherName

# DPT's reassemble factors: each of the four token maps is resampled to this multiple of the
# token grid (stride 4, 8, 16 and 32 of a patch-16 ViT).
FACTORS = (4.0, 2.0, 1.0, 0.5)


class ResidualConvUnit(nn.Module):
    """RefineNet's residual unit as DPT uses it: ``x + conv(relu(conv(relu(x))))``."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT's fusion block: the coarser path plus this level's (each through a residual unit),
    upsampled to the next finer level's size, then a 1x1 projection."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels=channels)
        self.unit = ResidualConvUnit(channels=channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None, *, size: tuple[int, int]) -> Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.project(x)


def _resample(channels: int, factor: float) -> nn.Module:
    """DPT's reassemble resampling: transposed convolutions up, a strided convolution down."""
    if factor > 1:
        return nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor))
    if factor < 1:
        return nn.Conv2d(channels, channels, 3, stride=round(1 / factor), padding=1)
    return nn.Identity()


@HEADS.register("depth_head")
class DepthHead(Head):
    """A light DPT-style dense head (Ranftl et al., "Vision Transformers for Dense Prediction",
    ICCV 2021, arXiv 2103.13413), as Depth Anything's decoder (arXiv 2401.10891).

    Reassemble: four token maps (the outputs of the student's blocks ``layers``, which the training
    step asks the student for, else its last tokens four times) are projected to ``features``
    channels and resampled to 4, 2, 1 and 1/2 times the token grid. Fusion: from the coarsest, each
    level is added to the upsampled coarser path through residual convolution units. Read-out: a 3x3
    convolution, bilinear upsampling to the teacher's target grid, a 3x3 convolution to ``hidden``
    channels, ReLU and a 1x1 convolution to the target's channels. DPT ends with one more ReLU
    (depth is non-negative); it is left out because the ``ssi`` loss and the depth metrics align
    scale and shift, so the sign of the raw output carries nothing, and a final ReLU would only stop
    the gradient wherever the untrained output is negative.
    """

    class Params(PluginParams):
        teacher: TeacherName
        target: str = "depth"
        features: int = Field(64, ge=1, description="channels of the reassembled and fused maps")
        hidden: int = Field(32, ge=1, description="channels of the read-out's last 3x3 conv")
        layers: tuple[int, int, int, int] | None = Field(
            None,
            description="the student blocks to reassemble (negative: from the end); the "
            "training step asks the student for their outputs; default: the last tokens at "
            "every scale",
        )

    def __init__(
        self,
        *,
        embed_dim: int,
        out_channels: int,
        target: str = "depth",
        features: int = 64,
        hidden: int = 32,
        output_grid: tuple[int, int] | None = None,
        layers: tuple[int, int, int, int] | None = None,
    ):
        """
        Args:
            embed_dim: the student's token width ``C``.
            out_channels: the target's channels (1 for a depth map).
            target: the teacher's target name the output is keyed by.
            features: channels of the reassembled and fused maps.
            hidden: channels before the final 1x1 convolution.
            output_grid: ``(H, W)`` of the output; None: the input image's side.
            layers: the four blocks to reassemble (non-negative indices), read from
                ``features.blocks`` (else ``features.intermediates``); None reads
                ``features.tokens`` at every scale.
        """
        super().__init__()
        self.target, self.output_grid, self.layers = target, output_grid, layers
        self.student_blocks = tuple(sorted(set(layers or ())))
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(embed_dim, features, 1), _resample(features, factor))
            for factor in FACTORS
        )
        self.fusion = nn.ModuleList(FusionBlock(channels=features) for _ in FACTORS)
        self.read_in = nn.Conv2d(features, features // 2 or 1, 3, padding=1)
        self.read_out = nn.Sequential(
            nn.Conv2d(features // 2 or 1, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1),
        )

    @classmethod
    def build(cls, params: Params, *, student: Student, teachers: dict[str, Teacher]) -> DepthHead:
        channels, grid = spatial_target_shape(teachers, params.teacher, params.target)
        layers = params.layers
        if layers is not None:
            depth = len(student.transformer_blocks())
            block_indices(layers, depth=depth, what=f"depth_head layers {list(layers)}")
            layers = tuple(i % depth for i in layers)  # in the given order: one per scale
        return cls(
            embed_dim=student.embed_dim,
            out_channels=channels,
            target=params.target,
            features=params.features,
            hidden=params.hidden,
            output_grid=grid,
            layers=layers,
        )

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output: ``tokens`` ``[B, h, w, C]`` (and ``intermediates``
                when ``layers`` is set).
            prompts: unused.

        Returns:
            ``{target: [B, C_t, H, W]}``, ``(H, W)`` the teacher's grid (else the image's side).
        """
        levels = [
            reassemble(tokens.permute(0, 3, 1, 2))
            for reassemble, tokens in zip(self.reassemble, self._token_maps(features), strict=True)
        ]
        sizes = [(int(level.shape[-2]), int(level.shape[-1])) for level in levels]
        # coarsest first; each fused path is upsampled to the next finer level's size (the
        # finest stays at 4x the token grid, the read-out upsamples the rest of the way)
        x = self.fusion[-1](levels[-1], None, size=sizes[-2])
        for index in reversed(range(len(levels) - 1)):
            x = self.fusion[index](x, levels[index], size=sizes[max(index - 1, 0)])
        grid = self.output_grid or (features.image_size, features.image_size)
        x = F.interpolate(self.read_in(x), size=grid, mode="bilinear", align_corners=True)
        return {self.target: self.read_out(x)}

    def _token_maps(self, features: StudentFeatures) -> list[Tensor]:
        if self.layers is None:
            return [features.tokens] * len(FACTORS)
        if all(i in features.blocks for i in self.layers):
            return [features.blocks[i] for i in self.layers]
        blocks = features.intermediates
        if not blocks:
            raise ValueError(
                f"depth_head layers {list(self.layers)} need the student's outputs of those "
                "blocks; call the student with blocks=head.student_blocks (as training and a "
                "merged model do) or return_intermediates=True, or leave layers unset to read "
                "its last tokens"
            )
        if any(not -len(blocks) <= i < len(blocks) for i in self.layers):
            raise ValueError(
                f"depth_head layers {list(self.layers)}: the student has {len(blocks)} blocks"
            )
        return [blocks[i] for i in self.layers]
