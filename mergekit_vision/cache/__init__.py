"""Teacher-target cache: targets computed once per sample view (``vmerge cache``), read in training.

See docs/cache.md. :mod:`.keyed` samples prompts per sample view, :mod:`.manifest` says what a
cache was computed from, :mod:`.writer` fills one, :mod:`.reader` serves it to ``task_step``.
"""
