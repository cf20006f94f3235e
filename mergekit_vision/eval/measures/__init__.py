"""The built-in evaluation metrics, one plugin per file (the registry kind ``metrics``).

The folder is not named ``metrics`` because :mod:`mergekit_vision.eval.metrics` is the module of
pure metric functions (accuracy, confusion matrix, COCO mask AP) that these plugins, the engine's
periodic evaluation and users' notebooks share; keeping that import path avoids breaking them.
"""
