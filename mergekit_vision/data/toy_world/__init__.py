"""The procedural toy world: scenes (:mod:`.world`, :mod:`.render`), its dataset plugin
(:mod:`.dataset`) and exports to the real formats (:mod:`.export`)."""
