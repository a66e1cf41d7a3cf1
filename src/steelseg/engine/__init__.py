"""Prediction over an archive, on one of two engines behind one seam: "predict these items with this bundle,
write these rows". ``local`` runs the streaming Predictor in this process (the default for one machine);
``ray`` runs it in a Ray Data actor pool that loads the bundle once per worker, on an embedded local instance
or an existing cluster (``--address``). Both write the same rows (:mod:`steelseg.engine.rows`) into the same
sharded, resumable output (:mod:`steelseg.engine.sink`). Ray is imported only by :mod:`steelseg.engine.ray_pool`.
"""

from steelseg.engine.job import ENGINES, predict_archive

__all__ = ["ENGINES", "predict_archive"]
