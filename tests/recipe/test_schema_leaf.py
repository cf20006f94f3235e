"""Validating a recipe's schema must not pull in the machinery the recipe describes."""

from __future__ import annotations

import json
import subprocess
import sys

# What ``import mergekit_vision.recipe`` may not load: model libraries, the parts above the schema.
FORBIDDEN = (
    "torch",
    "torchvision",
    "segment_anything",
    "open_clip",
    "timm",
    "transformers",
    "huggingface_hub",
    "mergekit_vision.hub",
    "mergekit_vision.toy",
    "mergekit_vision.eval",
    "mergekit_vision.data",
    "mergekit_vision.engine",
    "mergekit_vision.tools",
    "mergekit_vision.sam",
    "mergekit_vision.contracts",
)


def test_importing_the_recipe_package_loads_only_the_leaves():
    code = (
        "import json, sys\n"
        "import mergekit_vision.recipe, mergekit_vision.recipe.schema, mergekit_vision.recipe.io\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    ours = {m for m in loaded if m.startswith("mergekit_vision.")}
    assert ours <= {
        "mergekit_vision.errors",
        "mergekit_vision.registry",
        *(m for m in ours if m.startswith("mergekit_vision.recipe")),
    }
    assert "pydantic" in loaded and "yaml" in loaded
