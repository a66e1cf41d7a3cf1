"""Search of post-processing parameters on saved validation predictions. NumPy (and OpenCV's
connected components for the component-size refinement).

Kaggle mean Dice is a mean over (image, class) pairs, so each class is tuned on its own. Saved
per-image histograms of quantised probabilities (all pixels, and pixels inside the true mask) give
predicted area and intersection for every threshold at once by cumulative sums, so a grid over
threshold x minimum area x classifier gate costs no pass over the pixels: seconds for thousands
of images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from steelseg.inference.postprocess import PostProcess
from steelseg.metrics import class_max, dice_from_counts

__all__ = ["AREA_FRACTIONS", "GATES", "OFF", "SCALES", "THRESHOLDS", "TuneReport", "above_per_image", "detected_from_histograms",
           "detected_images", "dice_grid", "image_thresholds", "tune_min_component", "tune_postprocess",
           "with_min_area"]

THRESHOLDS = np.round(np.arange(0.20, 0.951, 0.05), 2)
OFF = 1.0  # a pixel threshold no probability exceeds: the class is switched off (predicts nothing)
# Minimum areas as a share of the image (Severstal 1600x256: 0 ... ~8000 pixels).
AREA_FRACTIONS = np.array([0, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02])
GATES = np.round(np.arange(0.0, 0.951, 0.05), 2)
LEVELS = 255  # probabilities are saved as round(p * 255)


def _above(hist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, T) pixels predicted at each threshold from (N, 256) histograms: ``q > t * 255``."""
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # pixels with q >= b
    cut = np.clip(np.floor(thresholds * LEVELS).astype(int) + 1, 0, LEVELS)  # q > t*255 <=> q >= floor(t*255)+1
    return above[:, cut]


def above_per_image(hist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N, X) pixels predicted from (N, 256) histograms at per-image thresholds (N, X): ``q > t * 255``;
    a threshold of 1 predicts nothing."""
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    above = np.concatenate([above, np.zeros((above.shape[0], 1), above.dtype)], axis=1)  # cut 256: none
    cut = np.clip(np.floor(np.asarray(thresholds) * LEVELS).astype(int) + 1, 0, LEVELS + 1)
    return np.take_along_axis(above, cut, axis=1)


def image_thresholds(pp: PostProcess, c: int, n: int, gate: np.ndarray | None) -> np.ndarray:
    """(N,) class ``c`` pixel threshold of each image (classifier-scaled where ``pp.gate_scale`` says)."""
    from steelseg.inference.postprocess import pixel_thresholds

    return np.broadcast_to(pixel_thresholds(pp, c, None if gate is None else gate[:, c]), (n,)).astype(np.float64)


def dice_grid(hist_all: np.ndarray, hist_true: np.ndarray, thresholds: np.ndarray,
              min_areas: np.ndarray) -> np.ndarray:
    """Per-image Dice (N, T, A) for one class from (N, 256) histograms of quantised probabilities.

    A pixel is predicted when ``q > threshold * 255``; a mask below its minimum area is dropped.
    """
    return with_min_area(_above(hist_all, thresholds), _above(hist_true, thresholds), hist_true.sum(axis=1),
                          min_areas)


def _recall_ok(detected: np.ndarray, defective: np.ndarray, min_recall: float | None) -> np.ndarray:
    """Which settings keep image recall >= ``min_recall`` on these images: ``detected`` is (N, ...) per
    image and setting. When none does, the settings of the highest recall reached (never an empty choice)."""
    if min_recall is None or not defective.any():
        return np.ones(detected.shape[1:], bool)
    recall = detected[defective].mean(axis=0)
    ok = recall >= min_recall - 1e-12
    return ok if ok.any() else np.isclose(recall, recall.max())


def with_min_area(pred_area: np.ndarray, inter: np.ndarray, true_area: np.ndarray,
                   min_areas: np.ndarray) -> np.ndarray:
    """Per-image Dice (N, X, A) from (N, X) predicted areas and intersections and (N,) true areas,
    for each minimum area: a mask below it is dropped and the pair scores as an empty prediction."""
    dice = dice_from_counts(inter, pred_area, np.asarray(true_area)[:, None])  # (N, X)
    empty_score = (np.asarray(true_area) == 0).astype(np.float64)[:, None, None]
    keep = pred_area[..., None] >= np.maximum(min_areas, 1)[None, None, :]
    return np.where(keep, dice[..., None], empty_score)


SCALES = np.array([1.5, 2.0, 3.0, 5.0, 8.0])  # classifier-scaled thresholds: s (55th place used 5)


def _scaled_best(hist_all: np.ndarray, hist_true: np.ndarray, gate: np.ndarray, thresholds: np.ndarray,
                 min_areas: np.ndarray, min_recall: float | None) -> tuple[float, float, float, int]:
    """Best (mean Dice, t0, s, min area) of one class under thresholds ``t0 * (s - (s - 1) * p)``."""
    n = hist_all.shape[0]
    t = np.minimum(thresholds[None, :, None] * (SCALES[None, None, :] - (SCALES - 1)[None, None, :]
                                                * gate[:, None, None]), 1.0)  # (N, T, S)
    flat = t.reshape(n, -1)
    pred, inter = above_per_image(hist_all, flat), above_per_image(hist_true, flat)
    grid = with_min_area(pred, inter, hist_true.sum(axis=1), min_areas)  # (N, T*S, A)
    detected = pred[..., None] >= np.maximum(min_areas, 1)
    scores = np.where(_recall_ok(detected, hist_true.sum(1) > 0, min_recall), grid.mean(0), -np.inf)
    x, a = np.unravel_index(int(np.argmax(scores)), scores.shape)
    ti, si = np.unravel_index(int(x), (thresholds.size, SCALES.size))
    return float(scores[x, a]), float(thresholds[ti]), float(SCALES[si]), int(min_areas[a])


@dataclass
class TuneReport:
    before: list[float]  # per-class mean Dice with the untuned default
    after: list[float]
    chosen: PostProcess

    @property
    def mean_before(self) -> float:
        return float(np.mean(self.before))

    @property
    def mean_after(self) -> float:
        return float(np.mean(self.after))

    def table(self, class_names: list[str]) -> str:
        pp = self.chosen
        lines = [f"{'class':<14}{'dice before':>12}{'dice after':>12}{'threshold':>11}{'min area':>10}"
                 f"{'min comp':>10}{'gate':>7}"]
        for c, name in enumerate(class_names):
            if pp.pixel_threshold[c] >= OFF:
                lines.append(f"{name:<14}{self.before[c]:>12.4f}{self.after[c]:>12.4f}  off: predicting nothing "
                             "scores better than any setting")
                continue
            gate = "-" if pp.gate_threshold is None else f"{pp.gate_threshold[c]:.2f}"
            if pp.gate_scale is not None and pp.gate_scale[c] > 1:  # classifier-scaled threshold instead
                gate = f"x{pp.gate_scale[c]:g}"
            lines.append(f"{name:<14}{self.before[c]:>12.4f}{self.after[c]:>12.4f}{pp.pixel_threshold[c]:>11.2f}"
                         f"{pp.min_area[c]:>10d}{pp.min_component[c]:>10d}{gate:>7}")
        lines.append(f"{'mean':<14}{self.mean_before:>12.4f}{self.mean_after:>12.4f}")
        return "\n".join(lines)


def tune_postprocess(hist_all: np.ndarray, hist_true: np.ndarray, image_pixels: int,
                     gate: np.ndarray | None = None, thresholds: np.ndarray = THRESHOLDS,
                     area_fractions: np.ndarray = AREA_FRACTIONS, gates: np.ndarray = GATES,
                     min_recall: float | None = None, scaled: bool = True) -> TuneReport:
    """Best per-class threshold, minimum area (and gate) for Kaggle mean Dice.

    ``hist_all`` / ``hist_true`` are (N, C, 256); ``gate`` is (N, C) classifier probabilities.
    The untuned default (0.5, no minimum area, no gate) is always in the grid, so the result on
    these predictions is never worse than the default. ``min_recall`` (e.g. 1.0: a missed crack
    costs more than a second look) keeps only settings under which at least that share of the
    defective images of each class still get a mask; where none does, those of the highest recall.
    With a classifier (``gate``) and ``scaled``, each class also tries classifier-scaled thresholds
    (``t0 * (s - (s - 1) * p)``, s in :data:`SCALES`) instead of the hard gate and keeps the better.
    A class whose best setting scores below predicting nothing for it is switched off (threshold
    :data:`OFF`), unless ``min_recall`` asks for its defects to be found.
    """
    n, k, _ = hist_all.shape
    thresholds = np.union1d(thresholds, [0.5])
    min_areas = np.unique(np.round(np.asarray(area_fractions) * image_pixels).astype(int))
    min_areas = np.union1d(min_areas, [0])
    gates_grid = np.union1d(gates, [0.0]) if gate is not None else np.array([0.0])
    i_half = int(np.flatnonzero(np.isclose(thresholds, 0.5))[0])
    chosen_t, chosen_a, chosen_g, chosen_s, before, after = [], [], [], [], [], []
    for c in range(k):
        grid = dice_grid(hist_all[:, c], hist_true[:, c], thresholds, min_areas)  # (N, T, A)
        before.append(float(grid[:, i_half, 0].mean()))
        kept = _above(hist_all[:, c], thresholds)[..., None] >= np.maximum(min_areas, 1)  # (N, T, A)
        if gate is not None:
            true_empty = (hist_true[:, c].sum(1) == 0).astype(np.float64)
            gated = gate[:, c][:, None] < gates_grid[None, :]  # (N, G)
            scores = np.where(gated[:, None, None, :], true_empty[:, None, None, None], grid[..., None]).mean(0)
            detected = kept[..., None] & ~gated[:, None, None, :]  # (N, T, A, G)
        else:
            scores = grid.mean(0)[..., None]  # (T, A, 1)
            detected = kept[..., None]
        scores = np.where(_recall_ok(detected, hist_true[:, c].sum(1) > 0, min_recall), scores, -np.inf)
        # Ties go to the simplest setting: lowest gate, smallest area, threshold nearest 0.5.
        best = scores.max()
        cand = np.argwhere(np.isclose(scores, best, rtol=0, atol=1e-12))
        t, a, g = min(cand.tolist(), key=lambda x: (x[2], x[1], abs(thresholds[x[0]] - 0.5)))
        best_t, best_a, best_g, best_s, best = float(thresholds[t]), int(min_areas[a]), float(gates_grid[g]), 1.0, \
            float(scores[t, a, g])
        if gate is not None and scaled:  # the soft gate, kept only where it beats the hard one
            d, t0, sc, area = _scaled_best(hist_all[:, c], hist_true[:, c], gate[:, c], thresholds, min_areas,
                                           min_recall)
            if d > best + 1e-12:
                best_t, best_a, best_g, best_s, best = t0, area, 0.0, sc, d
        off = float((hist_true[:, c].sum(1) == 0).mean())  # predicting nothing for the class
        if off > best + 1e-12 and (min_recall is None or not (hist_true[:, c].sum(1) > 0).any()):
            best_t, best_a, best_g, best_s, best = OFF, 0, 0.0, 1.0, off  # the class is switched off
        chosen_t.append(best_t)
        chosen_a.append(best_a)
        chosen_g.append(best_g)
        chosen_s.append(best_s)
        after.append(best)
    # Where every class is gated at >= g, an image whose classifier probabilities all stay below g
    # loses every class anyway: the pipeline then skips its segmentation (same result, less work).
    gate_any = min(chosen_g) if gate is not None and min(chosen_g) > 0 else None
    pp = PostProcess(chosen_t, chosen_a, [0] * k, chosen_g if gate is not None else None, gate_any,
                     chosen_s if gate is not None and scaled else None)
    return TuneReport(before, after, pp)


COMPONENT_FRACTIONS = np.array([0, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002])


def tune_min_component(probs_q: np.ndarray, true: np.ndarray, pp: PostProcess, gate: np.ndarray | None = None,
                       component_fractions: np.ndarray = COMPONENT_FRACTIONS,
                       area_fractions: np.ndarray = AREA_FRACTIONS,
                       min_recall: float | None = None) -> tuple[PostProcess, list[float]]:
    """Refine ``pp`` with the best minimum component size (and minimum area) per class.

    ``probs_q`` are (N, H, W, C) uint8 probabilities (round(p * 255)), ``true`` (N, H, W, C)
    binary masks, ``gate`` (N, C) classifier probabilities when ``pp`` gates. Each image's
    components are labelled once at the chosen threshold; the predicted area and intersection for
    every size cut then follow from per-component sums.
    ``min_recall`` as in :func:`tune_postprocess`: a refinement that would miss more defective
    images than that is not taken. Returns the refined parameters and the per-class mean Dice they reach.
    """
    import cv2

    n, h, w, k = probs_q.shape
    sizes = np.unique(np.round(np.asarray(component_fractions) * h * w).astype(int))
    min_areas = np.union1d(np.unique(np.round(np.asarray(area_fractions) * h * w).astype(int)), [0])
    out = replace(pp, min_area=list(pp.min_area), min_component=list(pp.min_component))
    scores = []
    for c in range(k):
        cuts = np.floor(image_thresholds(pp, c, n, gate) * LEVELS).astype(int)  # per image (classifier-scaled)
        pred_area = np.zeros((n, sizes.size))
        inter = np.zeros((n, sizes.size))
        true_area = true[..., c].reshape(n, -1).sum(1).astype(np.float64)
        for i in range(n):
            m = (probs_q[i, ..., c] > cuts[i]).astype(np.uint8)
            if not m.any():
                continue
            count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
            hit = np.bincount(labels[true[i, ..., c] > 0], minlength=count)[1:].astype(np.float64)
            keep = area[None, :] >= sizes[:, None]  # (S, components)
            pred_area[i] = keep @ area
            inter[i] = keep @ hit
        grid = with_min_area(pred_area, inter, true_area, min_areas)  # (N, S, A)
        gated = np.zeros(n, bool)
        if pp.gate_threshold is not None and gate is not None:  # gated images score as empty
            gated = gate[:, c] < pp.gate_threshold[c]
            grid[gated] = (true_area[gated] == 0)[:, None, None]
        detected = (pred_area[..., None] >= np.maximum(min_areas, 1)) & ~gated[:, None, None]
        mean = np.where(_recall_ok(detected, true_area > 0, min_recall), grid.mean(0), -np.inf)
        # Current choice (no component removal, the tuned area) unless something beats it.
        a_now = int(np.argmin(np.abs(min_areas - pp.min_area[c])))
        best_s, best_a, best = 0, a_now, mean[0, a_now]
        for s in range(sizes.size):
            for a in range(min_areas.size):
                if mean[s, a] > best + 1e-12:
                    best_s, best_a, best = s, a, mean[s, a]
        out.min_component[c] = int(sizes[best_s])
        out.min_area[c] = int(min_areas[best_a])
        scores.append(float(best))
    return out, scores


def detected_from_histograms(hist_all: np.ndarray, pp: PostProcess, gate: np.ndarray | None = None,
                             gate_any: np.ndarray | None = None) -> np.ndarray:
    """(N, C) whether each image gets a mask of each class under ``pp``, from the (N, C, 256) histograms
    alone: exact while ``pp`` removes no components (then use :func:`detected_images`)."""
    if any(pp.min_component):
        raise ValueError("min_component is set: detection needs the saved probabilities (detected_images)")
    n, k, _ = hist_all.shape
    out = np.zeros((n, k), bool)
    for c in range(k):
        area = above_per_image(hist_all[:, c], image_thresholds(pp, c, n, gate)[:, None])[:, 0]
        out[:, c] = area >= max(pp.min_area[c], 1)
        if pp.gate_threshold is not None and gate is not None:
            out[:, c] &= gate[:, c] >= pp.gate_threshold[c]
    if pp.gate_any is not None and gate_any is not None:
        out &= (np.asarray(gate_any) >= pp.gate_any)[:, None]
    return out


def detected_images(probs_q: np.ndarray, pp: PostProcess, gate: np.ndarray | None = None,
                    gate_any: np.ndarray | None = None) -> np.ndarray:
    """(N, C) whether each image gets a mask of each class under ``pp``, from the saved (N, H, W, C) uint8
    probabilities, through the same :func:`steelseg.inference.postprocess.apply` that predicts."""
    from steelseg.inference import postprocess

    out = np.zeros((probs_q.shape[0], probs_q.shape[-1]), bool)
    for i in range(probs_q.shape[0]):
        g = None if gate is None else gate[i]
        ga = None if gate_any is None else float(gate_any[i])
        masks = postprocess.apply(probs_q[i].astype(np.float64) / LEVELS, pp, g, ga)  # q > t * 255, as tuned
        out[i] = class_max(masks) > 0
    return out

