"""The metrics registry and the eval section: built-ins declare what they need, the old role keys
read as the new form, and bad names are clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mergekit_vision.eval.metric import CAPABILITIES, LAYOUTS, METRICS, Metric
from mergekit_vision.eval.report import resolution_robustness
from mergekit_vision.recipe.eval_section import EvalSpec
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.registry import ALL_REGISTRIES

BUILTINS = {
    "zeroshot_top1",
    "promptable_segmentation",
    "zeroshot_semseg",
    "refined_semseg",
    "pipeline_semseg",
    "relative_depth",
}


def test_metrics_is_a_registry_kind():
    assert ALL_REGISTRIES["metrics"] is METRICS
    assert METRICS.group == "mergekit_vision.metrics"
    assert BUILTINS <= set(METRICS.names())


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_metric_declares_needs_data_and_values(name):
    cls = METRICS.get(name)
    assert issubclass(cls, Metric)
    assert cls.needs and cls.needs <= set(CAPABILITIES)
    assert cls.reads in LAYOUTS
    assert cls.values and all(isinstance(v.higher_is_better, bool) for v in cls.values)


def test_applies_only_to_models_with_every_capability():
    metric = METRICS.get("refined_semseg")()

    class Model:
        capabilities = frozenset({"text_dense_embedding", "promptable_masks"})

    assert not metric.applies_to(Model())
    Model.capabilities = Model.capabilities | {"shared_encoder"}
    assert metric.applies_to(Model())


BASE = {"resolution": 64}


def test_old_role_keys_read_as_teachers_and_heads():
    old = EvalSpec.model_validate(
        {**BASE, "clip_teacher": "clip", "sam_teacher": "sam", "clip_head": "ch", "sam_head": "sh"}
    )
    assert old.teachers == ["clip", "sam"] and old.heads == ["ch", "sh"]
    new = EvalSpec.model_validate({**BASE, "teachers": ["clip", "sam"], "heads": ["ch", "sh"]})
    assert old == new


def test_old_and_new_keys_together_say_which_to_keep():
    with pytest.raises(ValueError, match=r"eval.clip_teacher is the old form of eval.teachers"):
        EvalSpec.model_validate({**BASE, "clip_teacher": "clip", "teachers": ["clip"]})


def test_default_runs_every_metric_on_every_model():
    spec = EvalSpec.model_validate(BASE)
    assert spec.teachers is None and spec.heads is None and spec.metrics is None


def test_unknown_names_are_recipe_errors(tiny_recipe_args):
    from mergekit_vision.errors import RecipeError

    recipe, *sets = tiny_recipe_args
    sets = [s for s in sets if s != "--set"]
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, [*sets, "eval={resolution: 64, teachers: [clp], heads: [nope]}"])
    issues = "\n".join(str(i) for i in err.value.issues)
    assert "eval.teachers.0 (line 3): unknown teacher 'clp'; defined: sam, clip" in issues
    assert "eval.heads.0 (line 3): unknown head 'nope'" in issues
    with pytest.raises(RecipeError, match="unknown metrics plugin 'top5'"):
        load_recipe(recipe, [*sets, "eval={resolution: 64, metrics: [{type: top5}]}"])


def test_resolution_robustness_is_the_worst_quality_ratio_to_the_main_side():
    by_resolution = {
        "128": {"top1": 0.5, "miou": 0.4, "seconds": 2.0},
        "96": {"top1": 0.25, "miou": 0.4, "seconds": 1.0},
        "160": {"top1": 0.5, "miou": 0.1, "seconds": 3.0},
    }
    metrics = {
        "top1": {"higher_is_better": True},
        "miou": {"higher_is_better": True},
        "seconds": {"higher_is_better": False},
    }
    ratios = resolution_robustness(by_resolution, metrics, reference=128)
    assert ratios == {"top1": 0.5, "miou": 0.25}  # timings are not compared


class _Captioned:
    """Image i's embedding is axis i; caption "axis j" embeds to axis j."""

    capabilities = frozenset({"text_image_embedding"})

    def __init__(self):
        self.text_tower = self

    def embed_images(self, images):
        return images[:, 0, 0, :3].float()

    def embed_texts(self, texts):
        axes = [int(t.split()[-1]) for t in texts]
        return torch.eye(3)[axes]


def test_retrieval_metric_on_a_hand_computed_case():
    dataset = []
    for i in range(3):
        image = torch.zeros(3, 4, 4, dtype=torch.uint8)
        image[0, 0, i] = 255
        dataset.append({"image": image, "captions": [f"axis {i if i < 2 else 0}"]})
    metric = METRICS.get("retrieval")()
    evaluation = SimpleNamespace(spec=SimpleNamespace(batch_size=2))
    found = metric.compute(_Captioned(), dataset, evaluation)
    # images 0 and 1 find their own caption first; image 2's caption ("axis 0") is not its own
    assert found["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert found["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert found["image_to_text_R@5"] == 1.0 and found["text_to_image_R@5"] == 1.0
