"""The book's plotting style and small plotting helpers (one style for every chapter).

Chapter: "Running this book". Every figure in the book is made through :func:`figure` (which applies
:func:`use_book_style`), so fonts, colours, grids and sizes agree across chapters.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import torch

PALETTE = ("#1f5aa6", "#d1495b", "#2e933c", "#edae49", "#6c4f9e", "#00798c", "#7f7f7f")
"""Colour cycle of the book (colour-blind-friendly-ish, prints in grey)."""

BOOK_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.6,
    "image.cmap": "viridis",
    "svg.hashsalt": "book",
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    mpl.rcParams.update(BOOK_STYLE)


def figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None):
    """A figure with ``nrows x ncols`` axes in the book style; returns ``(fig, axes)``.

    ``axes`` is a single Axes for 1x1, else a flat numpy array of Axes.
    """
    import matplotlib.pyplot as plt

    if ncols < 1 or nrows < 1:
        raise ValueError(f"ncols and nrows must be >= 1, got ncols={ncols}, nrows={nrows}")
    use_book_style()
    w0, h0 = BOOK_STYLE["figure.figsize"]
    size = (width or min(w0 * ncols * 0.75 + w0 * 0.25, 13.0), height or h0 * (0.85 * nrows + 0.15))
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    flat = axes.ravel()
    return fig, (flat[0] if flat.size == 1 else flat)


def image_grid(images: torch.Tensor | np.ndarray, nrow: int = 8, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile images into one array for ``imshow``.

    Args:
        images: ``(n, h, w)`` or ``(n, c, h, w)`` with ``c`` in {1, 3}.
        nrow: images per row.
        pad: pixels of padding (filled with the low end of ``value_range``).
        value_range: ``(lo, hi)`` mapped to [0, 1] and clipped.

    Returns:
        ``(H, W)`` for one channel or ``(H, W, 3)`` for three, values in [0, 1].
    """
    x = images.detach().float().cpu().numpy() if torch.is_tensor(images) else np.asarray(images, float)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, h, w) or (n, c, h, w) with c in (1, 3), got {x.shape}")
    if nrow < 1 or pad < 0:
        raise ValueError(f"need nrow >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n, c, h, w = x.shape
    ncol_img = min(nrow, n)
    rows = -(-n // ncol_img)
    grid = np.zeros((c, rows * (h + pad) + pad, ncol_img * (w + pad) + pad))
    for i in range(n):
        r, k = divmod(i, ncol_img)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def show_images(ax, images, nrow: int = 8, title: str | None = None, value_range=(-1.0, 1.0)) -> None:
    """Draw :func:`image_grid` of ``images`` on ``ax`` (grey for one channel), axes off."""
    grid = image_grid(images, nrow=nrow, value_range=value_range)
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def plot_curves(
    ax,
    curves: dict[str, Sequence[float]],
    x: Sequence[float] | None = None,
    logy: bool = False,
    xlabel: str = "step",
    ylabel: str = "loss",
    smooth: int = 1,
) -> None:
    """Plot named curves on ``ax`` with labels and a legend; optional moving-average ``smooth``."""
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    for name, ys in curves.items():
        y = np.asarray(ys, float)
        xs = np.arange(len(y)) if x is None else np.asarray(x, float)
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            xs = xs[smooth - 1 :]
        ax.plot(xs, y, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
