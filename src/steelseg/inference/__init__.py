"""The inference wing: ``Predictor`` (gating -> segmentation with TTA and fold ensembles ->
post-processing), bundles, backends (PyTorch, ONNX Runtime), tuning, evaluation, export and the
submission. It never imports Lightning or MLflow: a line-side or Kaggle install can leave them out.

    from steelseg.inference import Predictor
    pred = Predictor.from_bundle("bundles/seg")
    masks = pred.predict([image])[0].masks        # (H, W, C) uint8
"""

from steelseg.lazy import lazy_exports

_EXPORTS = {
    "Prediction": "steelseg.inference.predictor", "Predictor": "steelseg.inference.predictor",
    "read_bundle": "steelseg.inference.bundle", "write_bundle": "steelseg.inference.bundle",
    "resolve_model_dir": "steelseg.inference.bundle",
    "predict_folder": "steelseg.inference.predict", "PostProcess": "steelseg.inference.postprocess",
    "evaluate": "steelseg.inference.evaluation", "load_predictions": "steelseg.inference.evaluation",
    "tune_postprocess": "steelseg.inference.tune", "tune_min_component": "steelseg.inference.tune",
    "export_bundle": "steelseg.inference.export", "SubmissionWriter": "steelseg.inference.submission",
    "read_submission": "steelseg.inference.submission",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
