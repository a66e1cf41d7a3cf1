"""The progress of a whole fit: a Lightning callback that every fold's training shares, printing the
fit's share done and its ETA (all folds, not only the current epoch) every ``every`` seconds."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

__all__ = ["FitProgress", "eta_text"]


def eta_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class FitProgress(Callback):
    """``fit 38% · fold 2/3 · step 120/640 · 1.04 s/step · ETA 14m05s`` on stderr."""

    def __init__(self, folds: int, steps_per_fold: int, every: float | None = None) -> None:
        self.folds, self.steps = folds, max(1, steps_per_fold)
        self.every = every if every is not None else (10.0 if sys.stderr.isatty() else 30.0)
        self.done_folds: set[int] = set()
        self.fold = 0
        self._t0: float | None = None
        self._s0 = 0
        self._last = 0.0

    def start_fold(self, k: int) -> None:
        self.fold = k
        self._t0 = None

    def fold_done(self, k: int) -> None:
        self.done_folds.add(k)

    def done_steps(self, step: int) -> int:
        return len(self.done_folds - {self.fold}) * self.steps + min(step, self.steps)

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        now = time.time()
        step = int(trainer.global_step)
        if self._t0 is None:  # the first step of this process's fold (a resumed one starts part way)
            self._t0, self._s0, self._last = now, step, now
            return
        if now - self._last < self.every and step < self.steps:
            return
        self._last = now
        print(self.line(step, (now - self._t0) / max(1, step - self._s0)), file=sys.stderr, flush=True)

    def line(self, step: int, per_step: float) -> str:
        total = self.folds * self.steps
        done = self.done_steps(step)
        return (f"fit {100 * done / total:3.0f}% · fold {self.fold + 1}/{self.folds} · step {min(step, self.steps)}/"
                f"{self.steps} · {per_step:.2f} s/step · ETA {eta_text((total - done) * per_step)} (training)")
