import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from lib.plot import figure, image_grid, plot_curves, show_images


def test_image_grid_layout_and_range():
    imgs = torch.stack([torch.full((1, 2, 3), float(i)) for i in range(5)])  # (5, 1, 2, 3)
    grid = image_grid(imgs, nrow=2, pad=1, value_range=(0.0, 4.0))
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)
    assert grid[1, 1] == 0.0 and grid[1, 5] == 0.25 and grid[7, 1] == 1.0
    rgb = image_grid(np.zeros((2, 3, 4, 4)), nrow=2)
    assert rgb.shape == (6, 11, 3)


def test_image_grid_bad_shape():
    with pytest.raises(ValueError, match="images"):
        image_grid(torch.zeros(2, 2, 4, 4))


def test_figure_and_helpers():
    fig, ax = figure()
    plot_curves(ax, {"a": [3, 2, 1, 0.5]}, logy=True, smooth=2)
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step"
    fig, axes = figure(ncols=2)
    assert len(axes) == 2
    show_images(axes[0], torch.zeros(4, 8, 8), title="t")
    with pytest.raises(ValueError, match="ncols"):
        figure(ncols=0)
