"""Kaggle's code competitions: the offline submission kit (``steelseg kaggle``), the notebook's runtime
and the local rehearsal. :mod:`steelseg.kaggle.runtime` is what the notebook imports on Kaggle: the
predict path only."""

from steelseg.lazy import lazy_exports

__all__ = ["KitConfig", "build_kit", "rehearse"]
__getattr__, __dir__ = lazy_exports(__name__, {"KitConfig": "steelseg.kaggle.kit", "build_kit": "steelseg.kaggle.kit",
                                               "rehearse": "steelseg.kaggle.rehearsal"})
