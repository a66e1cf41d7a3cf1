"""The EDA report's plots, one function each. Every one saves a PNG in the report's ``img/`` folder and
returns its file name; :func:`plot_all` draws them all from the pass's numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steelseg import viz
from steelseg.reports.figures import pyplot, save_figure

__all__ = ["EdaNumbers", "plot_all"]


class EdaNumbers:
    """What the plots read: class names, presence and areas per image, brightness / contrast per image,
    and the per-class mask statistics (:class:`steelseg.reports.eda.MaskStats`)."""

    def __init__(self, names: list[str], pres: np.ndarray, areas: np.ndarray, brightness: np.ndarray,
                 contrast: np.ndarray, stats: Any, per_image: dict[str, int], cooc: list[list[int]]) -> None:
        self.names, self.pres, self.areas = names, pres, areas
        self.brightness, self.contrast, self.stats = brightness, contrast, stats
        self.per_image, self.cooc = per_image, cooc
        self.k = len(names)
        self.free = ~pres.any(axis=1)
        self.colors = [np.array(viz.color_of(c)) / 255 for c in range(self.k)]


def _counts(img_dir: Path, d: EdaNumbers) -> str:
    fig, ax = pyplot().subplots(1, 2, figsize=(10, 3.2))
    ax[0].bar(d.names + ["defect-free"], d.pres.sum(0).tolist() + [int(d.free.sum())],
              color=d.colors + [(0.6, 0.6, 0.6)])
    ax[0].set_title("images per class")
    ax[0].tick_params(axis="x", rotation=30)
    ax[1].bar([str(v) for v in range(d.k + 1)], [d.per_image[str(v)] for v in range(d.k + 1)], color="0.4")
    ax[1].set_title("defect classes per image")
    return save_figure(img_dir / "counts.png", fig)


def _cooccurrence(img_dir: Path, d: EdaNumbers) -> str:
    k = d.k
    fig, ax = pyplot().subplots(figsize=(1.2 * k + 2.5, 1.0 * k + 1.8))
    mat = np.asarray(d.cooc)
    im = ax.imshow(mat, cmap="viridis")
    ax.set_xticks(range(k), d.names, rotation=30)
    ax.set_yticks(range(k), d.names)
    for a in range(k):
        for b in range(k):
            ax.text(b, a, str(mat[a, b]), ha="center", va="center", color="w" if mat[a, b] < mat.max() / 2 else "k")
    fig.colorbar(im, ax=ax)
    ax.set_title("class co-occurrence (images)")
    return save_figure(img_dir / "cooccurrence.png", fig)


def _areas(img_dir: Path, d: EdaNumbers) -> str:
    fig, ax = pyplot().subplots(1, 2, figsize=(11, 3.4))
    for c in range(d.k):
        a = d.areas[d.pres[:, c], c]
        if len(a):
            bins = np.logspace(0, np.log10(max(a.max(), 10)), 30)
            ax[0].hist(a, bins=bins, histtype="step", lw=2, color=d.colors[c], label=d.names[c])
        s = np.asarray(d.stats.component_sizes.get(c, []))
        if len(s):
            bins = np.logspace(0, np.log10(max(s.max(), 10)), 30)
            ax[1].hist(s, bins=bins, histtype="step", lw=2, color=d.colors[c], label=d.names[c])
    for a_, title in zip(ax, ["mask area per (image, class), pixels", "connected component size, pixels"]):
        a_.set_xscale("log")
        a_.set_title(title)
        a_.legend(fontsize=8)
    return save_figure(img_dir / "areas.png", fig)


def _components(img_dir: Path, d: EdaNumbers) -> str:
    fig, ax = pyplot().subplots(figsize=(6, 3.2))
    data_c = [d.stats.components.get(c, []) for c in range(d.k)]
    ax.boxplot([x if x else [0] for x in data_c], tick_labels=d.names)
    ax.set_title("connected components per mask")
    return save_figure(img_dir / "components.png", fig)


def _heatmaps(img_dir: Path, d: EdaNumbers) -> str:
    k = d.k
    hh, ww = d.stats.heat_shape or (1, 1)
    wide = ww >= 2 * hh  # Severstal strips: one under the other; square images: side by side
    plt = pyplot()
    if wide:
        fig, axes = plt.subplots(k, 1, figsize=(9, (9 * hh / ww + 0.6) * k), squeeze=False)
        axes = axes[:, 0]
    else:
        fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.4), squeeze=False)
        axes = axes[0]
    for c in range(k):
        heat = d.stats.heat.get(c)
        heat = heat / max(int(d.pres[:, c].sum()), 1) if heat is not None else np.zeros((hh, ww))
        im = axes[c].imshow(heat, cmap="magma")
        axes[c].set_title(f"{d.names[c]}: share of masks covering each pixel", fontsize=9)
        axes[c].axis("off")
        fig.colorbar(im, ax=axes[c], fraction=0.046 if not wide else 0.02)
    return save_figure(img_dir / "heatmaps.png", fig)


def _brightness(img_dir: Path, d: EdaNumbers) -> str:
    fig, ax = pyplot().subplots(1, 2, figsize=(10, 3.2))
    groups = [d.brightness[d.pres[:, c]] for c in range(d.k)] + [d.brightness[d.free]]
    cgroups = [d.contrast[d.pres[:, c]] for c in range(d.k)] + [d.contrast[d.free]]
    labels = d.names + ["defect-free"]
    ax[0].boxplot([g if len(g) else [np.nan] for g in groups], tick_labels=labels)
    ax[0].set_title("mean brightness per image")
    ax[1].boxplot([g if len(g) else [np.nan] for g in cgroups], tick_labels=labels)
    ax[1].set_title("contrast (std of pixels) per image")
    for a_ in ax:
        a_.tick_params(axis="x", rotation=30)
    return save_figure(img_dir / "brightness.png", fig)


PLOTS = {"counts": _counts, "cooccurrence": _cooccurrence, "areas": _areas, "components": _components,
         "heatmaps": _heatmaps, "brightness": _brightness}


def plot_all(img_dir: Path, d: EdaNumbers) -> dict[str, str]:
    """Every plot of the report: key -> PNG file name in ``img_dir``."""
    return {key: plot(img_dir, d) for key, plot in PLOTS.items()}
