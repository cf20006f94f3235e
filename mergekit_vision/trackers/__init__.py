"""Experiment trackers (TensorBoard, Weights & Biases, MLflow): the plugins of the ``trackers``
registry (:mod:`.base`), driven as one by the run folder (:mod:`.group`). One plugin per file,
each importing its library only when a run starts it."""
