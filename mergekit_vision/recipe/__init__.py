"""The recipe: its schema (:mod:`.schema`, pydantic only) and reading it (:mod:`.io`: YAML with
line numbers, ``--set`` overrides, every problem reported at once)."""
