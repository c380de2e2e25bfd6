"""Figures for the 2-D default (matplotlib figures without pyplot: no display, no global backend).

Importing this module leaves matplotlib's backend alone. The figures are ``matplotlib.figure.Figure``
objects, which write PNGs (``fileio.savefig``) without pyplot. ``plots.plt`` is pyplot on the Agg backend,
selected the first time it is asked for, for callers that draw with pyplot.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

__all__ = ["samples_figure", "score_field_figure", "loss_figure"]


def __getattr__(name: str):
  if name == "plt":  # only when a pyplot figure is about to be drawn and written
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

LIMITS = (-5.0, 5.0)


def samples_figure(true: np.ndarray, samples: dict[str, np.ndarray]):
  """Scatter plots of the true samples and of each sampler's samples, on the same axes."""
  panels = [("data (exact mixture)", true)] + [(f"{name.upper()} samples", s) for name, s in samples.items()]
  fig = Figure(figsize=(4 * len(panels), 4))
  axes = fig.subplots(1, len(panels), sharex=True, sharey=True)
  for ax, (title, pts) in zip(np.atleast_1d(axes), panels):
    ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue" if title.startswith("data") else "tab:red")
    ax.set_title(title)
    ax.set_xlim(*LIMITS)
    ax.set_ylim(*LIMITS)
    ax.set_aspect("equal")
  fig.tight_layout()
  return fig


def score_field_figure(score_fn, exact_score_fn, t: float, title: str, log_density_fn=None, n: int = 19):
  """Learned and exact score fields at time ``t`` over the exact log-density, and their relative error.

  Arrows show the score's direction (unit length, so that the far field does not drown the modes); the
  grey background is ``log p_t`` when ``log_density_fn(x [B, 2], t [B])`` is given.
  """
  g = np.linspace(*LIMITS, n)
  xx, yy = np.meshgrid(g, g)
  pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), jnp.float32)
  ts = jnp.full((pts.shape[0],), t, jnp.float32)
  learned, exact = np.asarray(score_fn(pts, ts)), np.asarray(exact_score_fn(pts, ts))
  err = np.linalg.norm(learned - exact, axis=1) / (np.linalg.norm(exact, axis=1) + 1e-8)
  background = None
  if log_density_fn is not None:
    fine = np.linspace(*LIMITS, 120)
    fx, fy = np.meshgrid(fine, fine)
    fpts = jnp.asarray(np.stack([fx.ravel(), fy.ravel()], axis=1), jnp.float32)
    background = np.asarray(log_density_fn(fpts, jnp.full((fpts.shape[0],), t, jnp.float32))).reshape(fx.shape)
  fig = Figure(figsize=(14, 4.4))
  axes = fig.subplots(1, 3)
  for ax, field, name in [(axes[0], learned, "learned score"), (axes[1], exact, "exact score")]:
    if background is not None:
      ax.contourf(fx, fy, np.maximum(background, background.max() - 12), levels=20, cmap="Greys")
    unit = field / (np.linalg.norm(field, axis=1, keepdims=True) + 1e-8)
    ax.quiver(pts[:, 0], pts[:, 1], unit[:, 0], unit[:, 1], color="tab:red", scale=28, width=0.004)
    ax.set_title(f"{name} (direction)")
    ax.set_aspect("equal")
  im = axes[2].imshow(np.minimum(err, 1.0).reshape(n, n), origin="lower", extent=(*LIMITS, *LIMITS), cmap="magma",
                      vmin=0, vmax=1.0)
  axes[2].set_title("relative error (clipped at 1)")
  fig.colorbar(im, ax=axes[2])
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def loss_figure(history: np.ndarray, window: int = 100):
  """Training loss per step and its running mean."""
  fig = Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  ax.plot(history, lw=0.5, alpha=0.4, label="loss")
  if len(history) >= window:
    smooth = np.convolve(history, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window - 1, len(history)), smooth, lw=1.5, label=f"running mean ({window})")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_yscale("log")
  ax.legend()
  fig.tight_layout()
  return fig
