"""The strategies a stage injects into the engine loop: replay schedulers (:mod:`.replay`),
gradient-conflict strategies (:mod:`.conflict`), loss weightings (:mod:`.weighting`) and
teacher-target normalization (:mod:`.normalization`). One plugin per file, each registered
by name."""
