"""The recipe: its schema (:mod:`.schema`, pydantic only; plugin entries in :mod:`.specs`, app
sections in :mod:`.app`) and reading it (:mod:`.io`: YAML with line numbers, ``--set`` overrides,
every problem reported at once). Importing it loads no plugin, model library or app."""
