"""A picture grid of a few scenes: image, ground truth, and each model's semantic segmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from torch import Tensor  # noqa: E402


def label_colours(num_labels: int) -> ListedColormap:
    """Black background, then distinct colours; 255 (ignore) shows white."""
    base = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:, :3]
    extra = plt.get_cmap("Set3")(np.linspace(0, 1, 12))[:, :3]
    colours = np.concatenate([[[0, 0, 0]], base, extra])
    repeats = int(np.ceil(num_labels / len(colours))) + 1
    return ListedColormap(np.tile(colours, (repeats, 1))[:num_labels])


def save_grid(
    path: Path,
    *,
    images: Tensor,
    truth: Tensor,
    predictions: dict[str, Callable[[Tensor], Tensor]],
    class_names: list[str],
) -> Path:
    """One row per image ``[B, 3, R, R]`` in [0, 1]; columns image, ground truth, each model."""
    columns = ["image", "ground truth", *predictions]
    outputs = {name: fn(images) for name, fn in predictions.items()}
    cmap = label_colours(len(class_names))
    rows = images.shape[0]
    figure, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows))
    axes = np.atleast_2d(axes)
    for row in range(rows):
        panels = [images[row].permute(1, 2, 0).numpy(), truth[row]]
        panels += [outputs[name][row] for name in predictions]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if col == 0:
                ax.imshow(panel)
            else:
                shown = torch.where(panel == 255, 0, panel).numpy()
                ax.imshow(
                    shown, cmap=cmap, vmin=0, vmax=len(class_names) - 1, interpolation="nearest"
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
