"""Matplotlib drawings shared by the loop's TensorBoard images, ``tfsd.plot`` and ``tfsd.evaluate``.

Only drawing lives here (no run directories, no models). Figures use matplotlib's object-oriented
API on an explicit Agg canvas: no pyplot global state and no display needed. matplotlib is
imported when the first figure is drawn, not when tfsd is imported (it costs ~1 s).

The keep-rate figure shows stochastic depth's gates as realised (Huang et al. 2016, "Deep
Networks with Stochastic Depth", arXiv:1603.09382: block ``l`` runs with probability ``p_l``):
each block's fraction of kept gates against ``p_l``, with the binomial band expected from the
number of draws.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf


def new_figure(width: float = 6.0, height: float = 4.0):
    """A matplotlib ``Figure`` with an Agg canvas attached (``savefig`` and ``to_image`` work)."""
    # Optional heavy dependency: imported on first use (module docstring).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # (the same lazy import)

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str, dpi: int = 100) -> None:
    """Writes the figure as a PNG to ``path``, local or ``gs://`` (matplotlib opens local files
    only; the bytes go through ``tf.io.gfile``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def to_image(fig, dpi: int = 80) -> np.ndarray:
    """The figure rendered as a ``uint8`` RGB array ``[height, width, 3]``."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def keep_rate_figure(survival, keep_rates, draws, title: str):
    """Per-block realised keep rate (line 0) against the survival probability (line 1).

    Args:
      survival: ``p_l`` per block, ``l = 1..L``.
      keep_rates: the fraction of gates each block kept (``L`` values).
      draws: the number of gate draws behind each block's rate (``L`` values, or one for all);
        the shaded band is ``p_l +- 2 sqrt(p_l (1 - p_l) / draws)``. None: no band (unknown).
      title: the axes title.

    Returns:
      The matplotlib ``Figure``.
    """
    survival = np.asarray(survival, np.float64)
    keep_rates = np.asarray(keep_rates, np.float64)
    if survival.shape != keep_rates.shape:
        raise ValueError(
            f"survival and keep_rates must have one value per block, got shapes "
            f"{survival.shape} and {keep_rates.shape}."
        )
    index = np.arange(1, len(survival) + 1)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(index, keep_rates, "o", markersize=4, label="kept fraction (realised)")
    ax.plot(index, survival, "-", color="black", label="survival probability $p_l$")
    if draws is not None:
        draws = np.broadcast_to(np.asarray(draws, np.float64), survival.shape)
        if np.any(draws < 1):
            raise ValueError(f"draws must be >= 1, got {draws}.")
        sigma = np.sqrt(survival * (1.0 - survival) / draws)
        ax.fill_between(
            index, survival - 2 * sigma, survival + 2 * sigma, color="gray", alpha=0.3,
            label="$p_l \\pm 2\\sigma$",
        )  # fmt: skip
    ax.set_xlabel("stochastic-depth block l (in depth order)")
    ax.set_ylabel("keep rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig
