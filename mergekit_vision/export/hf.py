"""The merged model as a Hugging Face Hub folder: ``HubMergedModel.from_pretrained(folder)``.

Why huggingface_hub's ``PyTorchModelHubMixin`` and not a transformers ``PreTrainedModel``: the
merged model is not one architecture with a config class but whatever the recipe builds
(:func:`~mergekit_vision.engine.build.build_components`: a student and heads of registered
types, some of them deep copies of teacher parts). The mixin stores the constructor's keyword
arguments as ``config.json`` (here one, the resolved recipe) and the state dict as
``model.safetensors``, and ``from_pretrained`` calls the constructor and loads the weights: a
model rebuilt from its recipe, as ``vmerge`` itself does. A ``PreTrainedModel`` would need a
``PretrainedConfig`` mirroring the recipe, an ``AutoModel`` registration (or remote code) to load
it, and its loader builds modules on the meta device and skips their initialisation, which the
builder's teacher copies and weight loading do not survive.

The folder (``config.json``, ``model.safetensors``, ``recipe.resolved.yaml``, ``README.md``) is
also a ``vmerge`` checkpoint folder: ``vmerge export FOLDER --format sam`` and ``load_run`` read it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin

from mergekit_vision.engine.build import MergedModel, build_components
from mergekit_vision.engine.run_folder import MODEL_FILE, RECIPE_FILE
from mergekit_vision.export.card import CARD_FILE, EVAL_FILE, model_card, read_eval
from mergekit_vision.export.loading import LoadedRun, standalone_recipe
from mergekit_vision.recipe.io import dump_recipe, validate_recipe
from mergekit_vision.weights import load_strict

HF_CONFIG = "config.json"


class HubMergedModel(
    MergedModel,
    PyTorchModelHubMixin,
    library_name="mergekit-vision",
    paper_url="https://arxiv.org/abs/2310.15308",
    tags=["mergekit-vision", "model-merging", "distillation", "image-feature-extraction"],
):
    """A :class:`~mergekit_vision.engine.build.MergedModel` (``student``, ``heads``,
    ``normalizers``) built from a resolved recipe, with ``save_pretrained``, ``from_pretrained``
    and ``push_to_hub``. Built on the CPU, in eval mode."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        """
        Args:
            recipe: the resolved recipe as JSON (``Recipe.model_dump(mode="json")``); its teachers'
                checkpoints are not read (every weight of the merged model is in its own file)
                and its data is never opened.
        """
        resolved = validate_recipe(recipe, source="config.json (recipe)")
        standalone, _ = standalone_recipe(resolved, read_teachers=False)
        # The builder seeds torch's generator; a caller's stays as it was.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # random teachers are expected: only their shapes count
            built = build_components(
                standalone.model_copy(update={"device": "cpu"}), allow_random_init=True
            ).model
        super().__init__(
            student=built.student, heads=dict(built.heads), normalizers=dict(built.normalizers)
        )
        self.recipe = resolved
        self.eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        (save_directory / RECIPE_FILE).write_text(dump_recipe(self.recipe))

    @classmethod
    def _from_pretrained(cls, *, map_location: str = "cpu", strict: bool = True, **kwargs: Any):
        # The mixin loads non-strictly by default, which would leave a missing weight random.
        return super()._from_pretrained(map_location=map_location, strict=strict, **kwargs)

    def generate_model_card(self, *args: Any, metrics: dict | None = None, **kwargs: Any):
        """This model's card (:func:`~mergekit_vision.export.card.model_card`) under the Hub's
        metadata header, with ``metrics`` (an ``eval.json``) when given."""
        header = self._hub_mixin_info.model_card_data.to_yaml()
        body = model_card(self.recipe, metrics, loading=_loading_lines())
        return ModelCard(f"---\n{header}\n---\n\n{body}")


def export_hf(run: LoadedRun, output: Path) -> list[Path]:
    """Write ``config.json`` (``{"recipe": the resolved recipe}``), ``model.safetensors``,
    ``recipe.resolved.yaml`` and ``README.md`` (and the run's ``eval.json`` when it has one)."""
    model = HubMergedModel(recipe=run.recipe.model_dump(mode="json"))
    load_strict(
        model,
        run.model.state_dict(),
        what=f"the merged model of {run.checkpoint} does not fit the model its recipe builds",
    )
    metrics = read_eval(run)
    output.mkdir(parents=True, exist_ok=True)
    (output / CARD_FILE).unlink(missing_ok=True)  # save_pretrained keeps an existing card
    model.save_pretrained(output, model_card_kwargs={"metrics": metrics})
    written = [output / name for name in (HF_CONFIG, MODEL_FILE, RECIPE_FILE, CARD_FILE)]
    if metrics is not None:
        (output / EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        written.append(output / EVAL_FILE)
    return written


def _loading_lines() -> list[str]:
    return [
        "## Files and loading",
        "",
        f'- `{HF_CONFIG}`: `{{"recipe": ...}}`, the fully resolved recipe the model is rebuilt '
        "from;",
        f"- `{MODEL_FILE}`: every weight of the merged model (student `student.*`, heads "
        "`heads.<name>.*`);",
        f"- `{RECIPE_FILE}`: the same recipe as YAML (the folder is also a vmerge checkpoint).",
        "",
        "```python",
        "from mergekit_vision.export.hf import HubMergedModel",
        'model = HubMergedModel.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
        "features = model.student(images)  # images: [B, 3, R, R], RGB in [0, 1]",
        'outputs = model.heads["HEAD"](features)  # a head above; {target: tensor}',
        "```",
        "",
        "`vmerge export THIS_FOLDER --format sam` / `--format open_clip` / `--format onnx` "
        "convert it further (see docs/export.md of mergekit-vision).",
        "",
    ]
