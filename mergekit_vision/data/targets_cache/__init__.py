"""Teacher targets computed once per sample view and read in training (see docs/cache.md).

:mod:`.manifest` says what a cache was computed from and :mod:`.reader` serves it as a task's
target source; the writer is a tool (:mod:`mergekit_vision.tools.cache_writer`).
"""
