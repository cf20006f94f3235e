"""SAM 2's promptable mask decoder as a head on a multi-scale student's feature pyramid."""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import Tensor, nn
from transformers import Sam2Model

from mergekit_vision.contracts import (
    HEADS,
    Prompts,
    Student,
    StudentFeatures,
    Teacher,
    recipe_teacher,
    require_levels,
)
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.registry import PluginParams, TeacherName


@HEADS.register("sam2_head")
class Sam2Head(SamHead):
    """SAM 2's mask decoder (trainable) behind its prompt encoder (frozen), on a multi-scale
    student (Ravi et al., "SAM 2: Segment Anything in Images and Videos", arXiv 2408.00714).

    SAM 2's decoder is SAM's (Kirillov et al., arXiv 2304.02643) plus two skip connections: its
    upsampling adds the image encoder's stride-8 and stride-4 FPN maps (each through a 1x1
    convolution of the decoder, ``conv_s1``/``conv_s0``) to the upscaled stride-16 embedding. So
    the head reads the student's ``feature_map`` (stride 16) and the levels ``high_res_levels``
    (``stride4``, ``stride8``), which a multi-scale student (``sam2_hiera``) returns. The decoder,
    prompt encoder, image-wide position encoding and no-memory embedding are deep copies of a
    ``sam2`` teacher's. Prompts of every image are decoded in one batch, and the position
    encoding is made for the student's grid, so any input side works. As in SAM 2, the single
    mask is the first output token while training, and in evaluation the best of the three
    multimask outputs where that mask is unstable (``Sam2MaskDecoder``'s own choice, the one the
    teacher's targets make). A :class:`SamHead`, so the promptable evaluation and prediction use
    it as they use SAM's.
    """

    class Params(PluginParams):
        init_from: TeacherName
        target: str = "mask_logits"
        multimask_output: bool = False
        high_res_levels: tuple[str, str] = Field(
            ("stride4", "stride8"),
            description="the student levels the decoder's conv_s0 and conv_s1 read, in order",
        )

    def __init__(
        self,
        *,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        image_position: nn.Module,
        no_memory_embedding: Tensor,
        high_res_levels: tuple[str, str] = ("stride4", "stride8"),
        target: str = "mask_logits",
        multimask_output: bool = False,
    ) -> None:
        """
        Args:
            prompt_encoder: SAM 2's ``Sam2PromptEncoder``; frozen here.
            mask_decoder: SAM 2's ``Sam2MaskDecoder`` (with ``conv_s0``/``conv_s1``); trainable.
            image_position: ``Sam2Model.shared_image_embedding``, the random-Fourier position
                encoding of the image grid; frozen.
            no_memory_embedding: ``[1, 1, C]`` what SAM 2 adds to an image embedding without a
                video memory; frozen.
            high_res_levels: the student levels read at stride 4 and stride 8.
            target: the teacher target this head reproduces (its output key).
            multimask_output: predict SAM 2's 3 ambiguity-aware masks instead of one.
        """
        super().__init__(
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            target=target,
            multimask_output=multimask_output,
        )
        self.image_position = image_position.requires_grad_(False).eval()
        self.register_buffer("no_memory_embedding", no_memory_embedding.detach().clone())
        self.student_levels = tuple(high_res_levels)

    @classmethod
    def build(cls, params: Params, *, student: Student, teachers: dict[str, Teacher]) -> Sam2Head:
        teacher = recipe_teacher(teachers, params.init_from, field="sam2_head init_from")
        model = teacher.component("model") if "model" in teacher.component_names() else None
        if not isinstance(model, Sam2Model):
            raise ValueError(
                f"sam2_head init_from {params.init_from!r}: a {type(teacher).__name__} is not "
                "SAM 2 (transformers' Sam2Model); initialise sam2_head from a 'sam2' teacher, or "
                "use sam_head for a SAM teacher"
            )
        require_levels(student, params.high_res_levels, what="sam2_head")
        if student.out_channels != model.mask_decoder.hidden_size:
            raise ValueError(
                f"student out_channels {student.out_channels} != SAM 2 mask decoder width "
                f"{model.mask_decoder.hidden_size} of teacher {params.init_from!r}; give the "
                "student the teacher's fpn_hidden_size (init_from does)"
            )
        return cls(
            prompt_encoder=copy.deepcopy(model.prompt_encoder),
            mask_decoder=copy.deepcopy(model.mask_decoder),
            image_position=copy.deepcopy(model.shared_image_embedding),
            no_memory_embedding=model.no_memory_embedding,
            high_res_levels=params.high_res_levels,
            target=params.target,
            multimask_output=params.multimask_output,
        )

    def train(self, mode: bool = True) -> Sam2Head:
        super().train(mode)
        self.image_position.eval()
        return self

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output: ``feature_map`` ``[B, C, h, w]`` and the levels
                ``high_res_levels`` ``[B, C, 4h, 4w]`` and ``[B, C, 2h, 2w]``.
            prompts: ``N`` prompts per image, in pixels of the student's input image.

        Returns:
            ``{target: [B, N, K, 4h, 4w]}`` mask logits (``K`` is 3 with multimask output, else
            1): all point prompts, then all box prompts, as the ``sam2`` teacher orders them.
        """
        if prompts is None:
            raise ValueError(
                f"sam2_head needs prompts to predict {self.target!r}; got prompts=None"
            )
        embeddings = features.feature_map + self.no_memory_embedding.view(1, -1, 1, 1)
        fine, middle = (features.level(name) for name in self.student_levels)
        high_res = [self.mask_decoder.conv_s0(fine), self.mask_decoder.conv_s1(middle)]
        batch, _, height, width = embeddings.shape
        _check_batch(prompts, batch)
        # SAM 2 reads prompt pixels in its prompt encoder's frame (Sam2Processor rescales them)
        scale = self.prompt_encoder.input_image_size / prompts.image_size
        decoded = []
        if prompts.points is not None:
            points = prompts.points.float() * scale
            decoded.append(
                self._decode(embeddings, high_res, points=points, labels=prompts.point_labels)
            )
        if prompts.boxes is not None:
            decoded.append(self._decode(embeddings, high_res, boxes=prompts.boxes.float() * scale))
        if not decoded:
            k = self.mask_decoder.num_multimask_outputs if self.multimask_output else 1
            return {self.target: embeddings.new_zeros(batch, 0, k, 4 * height, 4 * width)}
        return {self.target: torch.cat(decoded, dim=1)}

    def _decode(
        self,
        embeddings: Tensor,
        high_res: list[Tensor],
        *,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        boxes: Tensor | None = None,
    ) -> Tensor:
        """One prompt set (points or boxes, in the prompt encoder's frame) of every image:
        ``[B, N, K, 4h, 4w]``."""
        batch, _, height, width = embeddings.shape
        sparse, _ = self.prompt_encoder(
            input_points=points, input_labels=labels, input_boxes=boxes, input_masks=None
        )
        # no mask prompt: the learned no-mask embedding, on the student's grid (any size)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        position = self.grid_position(height, width).expand(batch, -1, -1, -1)
        masks, _, _, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=position,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(batch, -1, height, width),
            multimask_output=self.multimask_output,
            high_resolution_features=high_res,
        )
        return masks

    def grid_position(self, height: int, width: int) -> Tensor:
        """``[1, C, h, w]``: SAM 2's position encoding of each cell centre of an ``h x w`` grid
        (``Sam2Model.get_image_wide_positional_embeddings`` for a grid of any size)."""
        table = self.image_position.positional_embedding
        grid = torch.ones((height, width), device=table.device, dtype=table.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / height
        x = (grid.cumsum(dim=1) - 0.5) / width
        return self.image_position(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)


def _check_batch(prompts: Prompts, batch: int) -> None:
    if prompts.points is not None and prompts.point_labels is None:
        raise ValueError("Prompts.points is given without Prompts.point_labels")
    for name in ("points", "boxes"):
        tensor = getattr(prompts, name)
        if tensor is not None and tensor.shape[0] != batch:
            raise ValueError(
                f"Prompts.{name} is for {tensor.shape[0]} images but the features have {batch}"
            )
