"""An earlier merged run as a frozen teacher: step-by-step merging.

SAM-CLIP (Wang et al., "SAM-CLIP: Merging Vision Foundation Models towards Semantic and Spatial
Understanding", arXiv 2310.15308) proposes merging more foundation models one at a time: the
merged model of one step is the base of the next, and the abilities it already has are kept by
replaying them with the merged model itself as their teacher, while the new teacher is distilled.
This teacher serves one head of an earlier run (its student backbone and that head, read from the
run folder's last checkpoint) so a recipe can replay it; a recipe's top-level ``init_from`` starts
the new student and heads from the same run (``docs/step-by-step.md``).

The targets are the head's outputs, named and shaped as the earlier run's teacher declared them
(``image_embedding`` of a CLIP head, ``mask_logits`` of a SAM head for given prompts, an adaptor's
``summary``/``spatial``, a depth head's ``depth``), in that teacher's own units (a head trained on
normalized targets is mapped back). The earlier student normalizes pixels with its own
statistics, so this teacher only resizes images to the side the earlier head was trained at.
What a merged model does not hold comes from the earlier run's teachers: a CLIP head's text
tower is its teacher's (read from that teacher's checkpoint, when present).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mergekit_vision.contracts import HEADS, STUDENTS, TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.references import declared_references
from mergekit_vision.recipe.schema import Recipe, TaskSpec, task_load_resolution
from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.normalization.base import NORMALIZATION, TargetNormalizer
from mergekit_vision.weights import load_strict, read_weights

# The run folder's layout as mergekit_vision/engine/run_folder.py writes it (this layer sits below
# the engine, so it cannot import those names; a test checks they agree).
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINTS = ("last", "last.old")  # last.old: a crash while `last` was being replaced
MODEL_FILE = "model.safetensors"
RECIPE_FILE = "recipe.resolved.yaml"

# torch.nn.utils.parametrize's names for a LoRA-adapted Linear weight (students/lora.py).
LORA_ORIGINAL = ".parametrizations.weight.original"
LORA_UPDATE = ".parametrizations.weight.0."


@dataclass(frozen=True)
class EarlierRun:
    """A run folder's last checkpoint: its resolved recipe and merged model weights (LoRA folded
    in, so the student's keys are the plain model's)."""

    folder: Path
    checkpoint: Path
    recipe: Recipe
    weights: dict[str, Tensor]

    def part(self, prefix: str) -> dict[str, Tensor]:
        """The weights under ``prefix`` (``"student"``, ``"heads.sam_head"``), prefix removed."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.weights.items() if k.startswith(start)}


def read_run(folder: str | Path) -> EarlierRun:
    """Read the run folder ``folder``; a clear error when it is missing or holds no
    checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"run folder {str(folder)!r} does not exist; give the folder an earlier "
            "`vmerge run` wrote (its --output, by default runs/<recipe name>), or train that "
            "run first"
        )
    checkpoint = next(
        (
            path
            for name in LAST_CHECKPOINTS
            if (path := folder / CHECKPOINTS_DIR / name).is_dir()
            and (path / MODEL_FILE).is_file()
            and (path / RECIPE_FILE).is_file()
        ),
        None,
    )
    if checkpoint is None:
        raise FileNotFoundError(
            f"{str(folder)!r} holds no checkpoint ({CHECKPOINTS_DIR}/last/{MODEL_FILE} "
            f"beside its {RECIPE_FILE}); let `vmerge run` reach its first checkpoint "
            "(checkpointing.every) or give another run folder"
        )
    recipe = load_recipe(checkpoint / RECIPE_FILE)
    weights = read_weights(
        checkpoint / MODEL_FILE,
        what="merged model weights",
        expected="the merged model (student and heads) that vmerge run saves as safetensors",
        remedy="copy an intact checkpoints/step-<N> of the run over checkpoints/last",
    )
    lora = recipe.student.lora
    if lora is not None:
        weights = fold_lora(weights, scale=lora.alpha / lora.rank)
    return EarlierRun(folder=folder, checkpoint=checkpoint, recipe=recipe, weights=weights)


def fold_lora(weights: Mapping[str, Tensor], *, scale: float) -> dict[str, Tensor]:
    """A state dict with low-rank updates (``W + scale B A``, students/lora.py) folded into plain
    weights: the keys of the model without LoRA. Pure ``state_dict -> state_dict``."""
    out = {}
    for key, value in weights.items():
        if key.endswith(LORA_ORIGINAL):
            layer = key.removesuffix(LORA_ORIGINAL)
            a, b = weights[f"{layer}{LORA_UPDATE}lora_a"], weights[f"{layer}{LORA_UPDATE}lora_b"]
            out[f"{layer}.weight"] = value + scale * (b.float() @ a.float()).to(value.dtype)
        elif LORA_UPDATE not in key:
            out[key] = value
    return out


def scale_prompts(prompts: Prompts, size: int) -> Prompts:
    """``prompts`` in pixels of the image resized to side ``size``."""
    if prompts.image_size == size:
        return prompts
    scale = size / prompts.image_size
    return Prompts(
        image_size=size,
        points=None if prompts.points is None else prompts.points * scale,
        point_labels=prompts.point_labels,
        boxes=None if prompts.boxes is None else prompts.boxes * scale,
    )


@TEACHERS.register("merged_run")
class MergedRunTeacher(Teacher):
    """An earlier merged run's student and one of its heads, frozen (SAM-CLIP's step-by-step
    merging, arXiv 2310.15308): the head's outputs are the targets that replay its ability."""

    class Params(PluginParams):
        run: Path = Field(description="the earlier run's folder (vmerge run's --output)")
        head: str = Field(description="the earlier run's head whose outputs are the targets")
        image_size: PositiveInt | None = Field(
            None,
            description="side in px the earlier model sees; default: the largest its head's "
            "task trained at",
        )

    def __init__(
        self,
        *,
        student: nn.Module,
        head: nn.Module,
        specs: dict[str, TargetSpec],
        image_size: int,
        normalizers: dict[str, TargetNormalizer],
        text_tower: Teacher | None = None,
        source: str = "",
    ):
        """
        Args:
            student: the earlier run's student backbone (its weights loaded).
            head: the earlier run's head (its weights loaded).
            specs: the head's targets by name, as the earlier run's teacher declared them.
            image_size: side every image is resized to before the student.
            normalizers: by target name, the normalizer a target was learned in (mapped back).
            text_tower: the CLIP teacher the head was distilled from, for its text embeddings.
            source: the run folder and head, for messages.
        """
        super().__init__()
        self.student, self.head, self.specs = student, head, specs
        self.input_size = image_size
        self.normalizers = nn.ModuleDict(normalizers)
        self.text_tower, self.source = text_tower, source
        # every call hands the head the blocks it reads, as the merged model's student does
        student.returned_blocks = tuple(getattr(head, "student_blocks", ()))
        # SAM's image embedding is the student's feature map the head decodes (heads/sam_head.py)
        self.decoder_parts = {
            name: part
            for name in ("prompt_encoder", "mask_decoder")
            if isinstance(part := getattr(head, name, None), nn.Module)
        }
        if len(self.decoder_parts) == 2 and any(s.needs_prompts for s in specs.values()):
            width = getattr(student, "out_channels", "C")
            self.specs = {
                **specs,
                "image_embeddings": TargetSpec(("B", width, "h", "w"), "the student's feature map"),
            }

    @classmethod
    def build(cls, params: Params, *, allow_random_init: bool = False) -> MergedRunTeacher:
        # allow_random_init is moot: every weight comes from the earlier run's checkpoint
        run = read_run(params.run)
        recipe = run.recipe
        if params.head not in recipe.heads:
            raise ValueError(
                f"head: run {str(run.folder)!r} has no head {params.head!r}; its heads: "
                f"{', '.join(recipe.heads)}"
            )
        tasks = {name: t for name, t in recipe.tasks.items() if t.head == params.head}
        if not tasks:
            raise ValueError(
                f"head: no task of run {str(run.folder)!r} trains head {params.head!r}, so it "
                "has no targets to replay; name a head one of its tasks trains"
            )
        teachers = _structure_teachers(recipe, params.head, tasks)
        student = STUDENTS.get(recipe.student.type).build(
            _without_checkpoints(recipe.student.type, recipe.student.params, STUDENTS),
            teachers=teachers,
        )
        spec = recipe.heads[params.head]
        head = HEADS.get(spec.type).build(spec.params, student=student, teachers=teachers)
        where = f"run {str(run.folder)!r} ({run.checkpoint / MODEL_FILE})"
        load_strict(student, run.part("student"), what=f"{where}: student")
        load_strict(head, run.part(f"heads.{params.head}"), what=f"{where}: head {params.head}")
        specs = {t.target: teachers[t.teacher].target_specs()[t.target] for t in tasks.values()}
        size = params.image_size or max(task_load_resolution(recipe, name) for name in tasks)
        teacher = cls(
            student=student,
            head=head,
            specs=specs,
            image_size=size,
            normalizers=_normalizers(run, tasks, teachers),
            text_tower=_text_tower(recipe, tasks, teachers),
            source=f"run {str(run.folder)!r}, head {params.head!r}",
        )
        return teacher.freeze()

    def target_specs(self) -> dict[str, TargetSpec]:
        return dict(self.specs)

    def component_names(self) -> list[str]:
        return list(self.decoder_parts)

    def component(self, name: str) -> nn.Module:
        if name not in self.decoder_parts:
            return super().component(name)
        return self.decoder_parts[name]

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1].
            targets: names from :meth:`target_specs`.
            prompts: needed for targets that need prompts; pixels of ``images`` as given.

        Returns:
            the head's outputs by target name (in the earlier teacher's units), and
            ``image_embeddings`` ``[B, C, h, w]`` for a SAM head.
        """
        unknown = sorted(set(targets) - set(self.specs))
        if unknown:
            raise ValueError(f"{self.source}: no target {unknown}; it has {list(self.specs)}")
        if prompts is None and any(self.specs[name].needs_prompts for name in targets):
            raise ValueError(f"{self.source}: targets {list(targets)} need prompts")
        features = self.student(self.prepare(images))
        outputs = (
            {"image_embeddings": features.feature_map} if "image_embeddings" in targets else {}
        )
        wanted = [name for name in targets if name != "image_embeddings"]
        if wanted:
            scaled = None if prompts is None else scale_prompts(prompts, self.input_size)
            predicted = self.head(features, prompts=scaled)
            for name in wanted:
                out = predicted[name]
                if name in self.normalizers:  # learned in normalized units: back to the teacher's
                    out = self.normalizers[name].denormalize(out)
                outputs[name] = out
        return outputs

    def dense_embeddings(self, images: Tensor) -> Tensor:
        """Per-patch embeddings ``[B, h, w, D]`` (L2-normalized) of a CLIP head, for dense
        zero-shot labels (the head's own, as the merged model's evaluation reads them)."""
        embed = getattr(self.head, "dense_embeddings", None)
        if not callable(embed):
            raise ValueError(f"{self.source}: the head has no per-patch embeddings")
        dense = embed(self.student(self.prepare(images)))
        normalizer = next((self.normalizers[n] for n in self.specs if n in self.normalizers), None)
        if normalizer is not None:  # [B, h, w, D]: the feature axis is already last
            dense = normalizer.inverse(dense)
        return F.normalize(dense.float(), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """L2-normalized text embeddings ``[T, D]`` of the CLIP teacher the head was distilled
        from (the merged model holds no text tower)."""
        if self.text_tower is None:
            raise ValueError(
                f"{self.source}: no text tower; it is the earlier run's CLIP teacher, whose "
                "checkpoint must be where that run's recipe says (a head distilled from a "
                "text-aligned teacher only)"
            )
        return self.text_tower.encode_text(texts)  # type: ignore[operator]


def _build_teacher(spec: Any, *, real: bool) -> Teacher:
    """The earlier run's teacher ``spec``: its real weights, or random ones that only give
    its structure and target shapes (whatever a student or head copies is loaded over)."""
    cls = TEACHERS.get(spec.type)
    params = spec.params if real else _without_checkpoints(spec.type, spec.params, TEACHERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are expected here
        return cls.build(params, allow_random_init=not real).freeze()


def _without_checkpoints(kind: str, params: Any, registry: Any) -> Any:
    fields = getattr(registry.get(kind), "checkpoint_fields", lambda _: {})(params)
    return params.model_copy(update={field: None for field in fields})


def _structure_teachers(
    recipe: Recipe, head: str, tasks: dict[str, TaskSpec]
) -> dict[str, Teacher]:
    """The earlier teachers that the student, the head and its tasks name, with random weights."""
    named = {t.teacher for t in tasks.values()}
    for spec in (recipe.student, recipe.heads[head]):
        refs = declared_references(type(spec.params), spec.params, "")
        named |= {name for _, section, name in refs if section == "teachers" and name}
    return {name: _build_teacher(recipe.teachers[name], real=False) for name in sorted(named)}


def _normalizers(
    run: EarlierRun, tasks: dict[str, TaskSpec], teachers: dict[str, Teacher]
) -> dict[str, TargetNormalizer]:
    """By target name, the earlier tasks' target normalizers with their saved statistics."""
    out = {}
    for name, task in tasks.items():
        if task.normalize is None:
            continue
        width = teachers[task.teacher].target_specs()[task.target].shape[1]
        normalizer = NORMALIZATION.get(task.normalize.type).build(task.normalize.params, dim=width)
        load_strict(normalizer, run.part(f"normalizers.{name}"), what=f"normalizer of {name}")
        out[task.target] = normalizer
    return out


def _text_tower(
    recipe: Recipe, tasks: dict[str, TaskSpec], teachers: dict[str, Teacher]
) -> Teacher | None:
    """The teacher of the head's first task with its real weights, when it has a text tower and
    its checkpoint is there (otherwise none: zero-shot then says what is missing)."""
    name = next(iter(tasks.values())).teacher
    if not callable(getattr(teachers[name], "encode_text", None)):
        return None
    spec = recipe.teachers[name]
    files = TEACHERS.get(spec.type).checkpoint_fields(spec.params).values()
    if not all(path is not None and Path(path).is_file() for path in files):
        return None
    return _build_teacher(spec, real=True)
