"""The base of evaluation metrics, the plugins of the ``metrics`` registry.

A metric measures one ability of one model at one resolution. It declares

- ``needs``: the capabilities a model must offer (see :data:`CAPABILITIES`); ``vmerge eval`` runs it
  on every evaluated model that offers all of them, teachers and the merged model alike;
- ``reads``: the eval section's dataset it reads (``classification``, ``instances``,
  ``semantic``, ``captions``, ``depth``); without that dataset it does not run;
- ``values``: the keys it writes into the model's ``eval.json`` object, each with the direction
  that is better (a metric may also write unlisted keys, such as a calibrated threshold, that the
  table leaves out);
- ``ability``: the table group its rows are printed in;
- ``Params``: its recipe parameters (``eval.metrics: [{type: name, params: {...}}]``).

:meth:`Metric.compute` returns the values for one model on the dataset built at one resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import Field
from torch import Tensor

from mergekit_vision.recipe.specs import DatasetSpec
from mergekit_vision.registry import PluginParams, Registry

# What an evaluated model can offer (each eval model class lists its own in ``capabilities``).
CAPABILITIES = {
    "text_image_embedding": "an image embedding aligned with a text tower (embed_images)",
    "text_dense_embedding": "per-patch embeddings aligned with a text tower (embed_patches)",
    "promptable_masks": "mask logits for point and box prompts (encode, mask_logits)",
    "shared_encoder": "masks and patch embeddings from one encoder pass (embed_patches_from)",
    "mask_then_classify": "masks of everything, each classified by a text-aligned model",
    "summary": "one feature vector per image",
    "dense": "a feature map per image",
    "depth": "a relative depth map per image (depth_maps; depth_space says disparity or depth)",
}


class Evaluation(Protocol):
    """What a metric may ask of the evaluation running it (``eval.report.Evaluation``)."""

    spec: Any  # the recipe's eval section
    resolution: int  # the side being measured

    def texts(self, model: Any, dataset: Any, *, skip_background: bool) -> Tensor: ...

    def features(
        self, model: Any, kind: str, data: DatasetSpec, label: str
    ) -> tuple[Tensor, Tensor]: ...

    def semseg(self, prepare: Any, dataset: Any, **labelers: Any) -> dict[str, dict[str, Any]]: ...

    def cost(self, segment: Any, dataset: Any, images: int = 4) -> dict[str, float]: ...


# The datasets of the eval section a metric can read.
LAYOUTS = ("classification", "instances", "semantic", "captions", "depth")


@dataclass(frozen=True)
class Value:
    """One number a metric writes: its ``eval.json`` key and which direction is better."""

    key: str
    higher_is_better: bool = True


class Metric:
    """Base of every metric plugin: declares what it needs and reads, computes its values.

    Plugins are registered with ``@METRICS.register("name")`` and built with their validated
    ``Params``; one instance measures every model the metric applies to.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    reads: ClassVar[str] = "classification"
    values: ClassVar[tuple[Value, ...]] = ()
    ability: ClassVar[str] = "other"
    registry_name: ClassVar[str]

    class Params(PluginParams):
        pass

    def __init__(self, params: PluginParams | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def build(cls, params: PluginParams) -> Metric:
        return cls(params)

    def data(self, spec: Any) -> DatasetSpec | None:
        """The dataset this metric scores on: the eval section's ``reads`` data."""
        return getattr(spec, self.reads, None)

    def applies_to(self, model: Any) -> bool:
        return self.needs <= frozenset(getattr(model, "capabilities", ()))

    def compute(self, model: Any, dataset: Any, evaluation: Evaluation) -> dict[str, float]:
        """The values for ``model`` on ``dataset`` (built at one resolution); ``evaluation``
        gives the eval settings (``evaluation.spec``), text embeddings and shared helpers."""
        raise NotImplementedError


class ProbeParams(PluginParams):
    train: DatasetSpec | None = Field(None, description="the probe's train split")
    heldout: DatasetSpec | None = Field(
        None,
        description="the split the probe is scored on (default: the eval section's data the "
        "metric reads)",
    )


class ProbeMetric(Metric):
    """A probe: fit on frozen features of a train split (``params.train``), scored on
    ``params.heldout`` (default: the eval section's data the metric reads); nothing runs without
    a train split.

    Subclasses say which features (``feature``: ``"summary"`` or ``"dense"``) and which sample key
    holds the target (``label``), and give ``Params`` derived from :class:`ProbeParams`.
    """

    feature: ClassVar[str] = "summary"
    label: ClassVar[str] = "label"
    Params = ProbeParams

    def data(self, spec: Any) -> DatasetSpec | None:
        return self.params.heldout or super().data(spec)

    def split_features(
        self, model: Any, evaluation: Evaluation
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """``(train features, train labels, test features, test labels)``, or None without a
        train split; features are cached per model, data and resolution by ``evaluation``."""
        if self.params.train is None:
            return None
        train, scored = self.params.train, self.data(evaluation.spec)
        train_features, train_labels = evaluation.features(model, self.feature, train, self.label)
        test_features, test_labels = evaluation.features(model, self.feature, scored, self.label)
        return train_features, train_labels, test_features, test_labels


METRICS: Registry[Metric] = Registry("metrics")
