"""The planning wing: ``steelseg plan`` and ``steelseg fit``. A dataset fingerprint and this machine's facts
go through a table of rules (:mod:`steelseg.planning.rules`) into a steelseg config, which ``fit`` trains
over folds, tunes out of fold and bundles. Above training and inference, as nnU-Net keeps its experiment
planning apart from both.

    from steelseg.planning import FitOptions, fit_folder
    result = fit_folder("data/line3", "fits/line3", FitOptions(minutes=30))
"""

from steelseg.lazy import lazy_exports

_EXPORTS = {
    "FitOptions": "steelseg.planning.fit", "fit_folder": "steelseg.planning.fit",
    "Plan": "steelseg.planning.plan", "make_plan": "steelseg.planning.plan", "read_plan": "steelseg.planning.plan",
    "write_plan": "steelseg.planning.plan", "RULES": "steelseg.planning.rules", "decide": "steelseg.planning.rules",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
