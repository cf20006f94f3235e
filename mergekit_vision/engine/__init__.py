"""The engine: builds the recipe's components and trains them, stage by stage.

:mod:`.build` turns a resolved recipe into components, :mod:`.stage` builds one stage's optimiser
and strategies, :mod:`.step` computes one task's loss, :mod:`.loop` runs the stages (its
``Engine.step`` is the one training step), :mod:`.gradients` records the per-task gradients the
strategies read, and :mod:`.run_folder` owns the run folder (resolved recipe, metrics,
checkpoints, resume). The engine imports nothing of eval, export, tools, the toy world or the
targets cache: what it needs of them is handed in (a task's target source, ``build.TargetSource``).
"""
