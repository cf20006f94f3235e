"""SAM's promptable mask decoder as a head on the student's feature map."""

from __future__ import annotations

import copy

from segment_anything.modeling import MaskDecoder
from torch import Tensor, nn

from mergekit_vision.contracts import (
    HEADS,
    Head,
    Prompts,
    Student,
    StudentFeatures,
    Teacher,
    recipe_teacher,
)
from mergekit_vision.registry import PluginParams, TeacherName
from mergekit_vision.sam.decoding import decode_masks


@HEADS.register("sam_head")
class SamHead(Head):
    """SAM's mask decoder (trainable) behind SAM's prompt encoder (frozen), as in SAM-CLIP
    (Wang et al., arXiv 2310.15308), where the SAM branch keeps SAM's own decoder and prompt
    encoder on top of the merged backbone (Kirillov et al., "Segment Anything", arXiv 2304.02643).

    Both are deep copies of a SAM-like teacher's components, so the teacher stays untouched.
    The student's ``feature_map`` plays SAM's image embedding; prompts are decoded for every image
    of the batch at once (:func:`~mergekit_vision.sam.decoding.decode_masks`).
    """

    class Params(PluginParams):
        init_from: TeacherName
        target: str = "mask_logits"
        multimask_output: bool = False

    def __init__(
        self,
        *,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        target: str = "mask_logits",
        multimask_output: bool = False,
    ) -> None:
        """
        Args:
            prompt_encoder: SAM's ``PromptEncoder``; frozen here.
            mask_decoder: SAM's ``MaskDecoder``; trainable.
            target: the teacher target this head reproduces (its output key).
            multimask_output: predict SAM's 3 ambiguity-aware masks instead of one.
        """
        super().__init__()
        self.prompt_encoder = prompt_encoder.requires_grad_(False).eval()
        # Teachers are frozen, so a copy of their decoder must be made trainable again.
        self.mask_decoder = mask_decoder.requires_grad_(True)
        self.target = target
        self.multimask_output = multimask_output

    @classmethod
    def build(cls, params: Params, *, student: Student, teachers: dict[str, Teacher]) -> SamHead:
        teacher = recipe_teacher(teachers, params.init_from, field="sam_head init_from")
        if not isinstance(teacher.component("mask_decoder"), MaskDecoder):
            # SAM 2's decoder also reads the encoder's stride-4 and stride-8 maps, which a
            # single-scale student feature map does not have
            raise ValueError(
                f"sam_head init_from {params.init_from!r}: its mask decoder is a "
                f"{type(teacher.component('mask_decoder')).__name__}, not segment_anything's "
                "SAM mask decoder this head runs; initialise sam_head from a 'sam' teacher, "
                "or use sam2_head (with a multi-scale student, sam2_hiera) for SAM 2's decoder"
            )
        prompt_encoder = copy.deepcopy(teacher.component("prompt_encoder"))
        mask_decoder = copy.deepcopy(teacher.component("mask_decoder"))
        if student.out_channels != prompt_encoder.embed_dim:
            raise ValueError(
                f"student out_channels {student.out_channels} != prompt encoder embed_dim "
                f"{prompt_encoder.embed_dim} of teacher {params.init_from!r}; set the student's "
                "out_chans to match"
            )
        return cls(
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            target=params.target,
            multimask_output=params.multimask_output,
        )

    def train(self, mode: bool = True) -> SamHead:
        super().train(mode)
        self.prompt_encoder.eval()  # frozen parts stay deterministic
        return self

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output; ``features.feature_map`` is ``[B, C, h, w]``.
            prompts: ``N`` prompts per image, in pixels of the student's input image.

        Returns:
            ``{target: [B, N, K, 4h, 4w]}`` mask logits (``K`` is 3 with multimask output, else 1).
        """
        if prompts is None:
            raise ValueError(f"sam_head needs prompts to predict {self.target!r}; got prompts=None")
        mask_logits, _ = decode_masks(
            prompt_encoder=self.prompt_encoder,
            mask_decoder=self.mask_decoder,
            image_embeddings=features.feature_map,
            prompts=prompts,
            multimask_output=self.multimask_output,
        )
        return {self.target: mask_logits}
