"""Tools on top of the library: benchmarks, the cost profile, strategy comparison, the target-cache
writer. Each is a ``vmerge`` command; none is imported by the engine."""
