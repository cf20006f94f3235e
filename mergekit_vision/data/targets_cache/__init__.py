"""Teacher targets computed once per sample view and read in training (see docs/cache.md).

:mod:`.manifest` says what a cache was computed from, :mod:`.codecs` how its targets are stored
(fp16, bf16, int8, pca:K) and :mod:`.reader` serves it, decoded, as a task's target source; the
writer is a tool (:mod:`mergekit_vision.tools.cache_writer`).
"""
