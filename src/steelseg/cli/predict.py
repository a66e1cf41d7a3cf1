"""steelseg evaluate / tune / bundle / predict / export: the prediction pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from steelseg.cli.archive import add_engine_args, add_eval_engine_args, predict_archive_cmd
from steelseg.cli.common import add_backend_args, add_pipeline_args, add_tile_args, class_names, device, table
from steelseg.errors import SteelsegError

EXPORT_EPILOG = """examples:
  steelseg export bundles/seg --out bundles/seg-onnx                      # fp32, parity-checked
  steelseg export bundles/seg --out bundles/seg-int8 --quantize int8     # + Dice before/after
  steelseg predict bundles/seg-int8 data/test_images --out out --threads 2
"""


def _print_eval(res: dict) -> None:
    names = list(res["dice_per_class"])
    rows = [(n, f"{res['dice_per_class'][n]:.4f}", f"{res['all_empty_dice_per_class'][n]:.4f}",
             "-" if res["iou_per_class"][n] is None else f"{res['iou_per_class'][n]:.4f}") for n in names]
    rows.append(("mean", f"{res['dice']:.4f}", f"{res['all_empty_dice']:.4f}", f"{res['miou']:.4f}"))
    print(table(["class", "kaggle dice", "all-empty dice", "IoU"], rows))
    for name, s in (res.get("classifier") or {}).items():
        print(f"classifier {name}: precision {s['precision']:.3f} recall {s['recall']:.3f} (support {s['support']})")
    if res.get("detection"):
        print("\n" + detection_table(res["detection"]))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from steelseg.inference.evaluation import evaluate
    from steelseg.inference.predictor import Predictor

    if args.engine != "ray" and (args.address or args.workers):
        raise SteelsegError("--address and --workers are for --engine ray")
    if not args.bundle and not args.runs:
        raise SteelsegError("give run folders (RUN...) or --bundle")
    predictor = None
    if args.bundle and args.engine != "ray":
        predictor = Predictor.from_bundle(args.bundle, device=device(args.device), tta=args.tta or None,
                                          backend=args.backend, threads=args.threads)
    out = args.out or (Path(args.runs[0] if args.runs else args.bundle) / f"eval-{args.split}")
    if args.engine == "ray":
        from steelseg.cli.archive import evaluate_on_engine

        res = evaluate_on_engine(args, out)
    else:
        res = evaluate(args.runs, args.data, out, args.split, args.classifier or [], args.tta, None, predictor,
                       progress=sys.stderr.isatty(), device=device(args.device))
    _print_eval(res)
    print(f"\nwrote {out}/metrics.json, per_image.csv, predictions.npz")
    return 0


def _saved_matches(prev: dict, args: argparse.Namespace) -> bool:
    """Whether saved predictions came from these models, data, split and TTA, with raw probabilities
    (a bundle whose gate skipped segmentation of some images leaves zeros instead)."""
    return (prev["data"] == str(args.data) and prev["split"] == args.split and prev["tta"] == args.tta
            and prev["segmenters"] == [str(r) for r in args.runs]
            and prev["classifiers"] == [str(c) for c in args.classifier or []]
            and (prev.get("postprocess") or {}).get("gate_any") is None)


def _check_min_recall(value: float | None) -> None:
    """tune and cv-tune: --min-recall is a share in (0, 1]."""
    if value is not None and not 0 < value <= 1:
        raise SteelsegError(f"--min-recall {value}: a share in (0, 1], e.g. 1.0 to miss no defective image")


def cmd_tune(args: argparse.Namespace) -> int:
    import numpy as np

    from steelseg.fsutil import refuse_existing
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.evaluation import evaluate, load_predictions
    from steelseg.inference.tune import tune_min_component, tune_postprocess

    _check_min_recall(args.min_recall)
    refuse_existing(args.out, args.overwrite, "bundle")  # before minutes of prediction, not after
    eval_dir = Path(args.eval_dir or Path(args.runs[0]) / f"eval-{args.split}")
    meta_path = eval_dir / "metrics.json"
    same = meta_path.is_file() and _saved_matches(json.loads(meta_path.read_text()), args)
    if not same:
        print(f"predicting {args.split} once (saved to {eval_dir}) ...", flush=True)
        evaluate(args.runs, args.data, eval_dir, args.split, args.classifier or [], args.tta,
                 progress=sys.stderr.isatty(), device=device(args.device))
    else:
        print(f"reusing saved predictions in {eval_dir}")
    pred = load_predictions(eval_dir)
    pixels = int(np.median(pred["image_pixels"]))
    report = tune_postprocess(pred["hist_all"], pred["hist_true"], pixels, pred.get("gate"),
                              min_recall=args.min_recall, scaled=not args.no_scaled)
    if "probs" in pred and "true" in pred:  # refine with a minimum connected-component size
        report.chosen, report.after = tune_min_component(pred["probs"], pred["true"], report.chosen,
                                                         pred.get("gate"), min_recall=args.min_recall)
    names = list(json.loads(meta_path.read_text())["dice_per_class"])
    print(report.table(names))
    detection = _tuned_detection(pred, report.chosen, names)
    if detection is not None:
        print("\n" + detection_table(detection))
    extra = {"tuned_on": {"data": str(args.data), "split": args.split, "images": int(len(pred["image_ids"])),
                          "dice_before": report.mean_before, "dice_after": report.mean_after,
                          "per_class_before": report.before, "per_class_after": report.after,
                          "min_recall": args.min_recall, "scaled_searched": not args.no_scaled,
                          "detection": detection}}
    out = write_bundle(args.out, args.runs, args.classifier or [], report.chosen, names, args.tta,
                       extra=extra, overwrite=args.overwrite, tile=args.tile,
                       overlap=128 if args.overlap is None else args.overlap)
    _reference(out, args.data, [str(i) for i in pred["image_ids"]], names, f"steelseg tune: split {args.split}")
    print(f"\nbundle written to {out} (predict with: steelseg predict {out} IMAGES --out DIR)")
    return 0


def _reference(bundle: Path, data: str, ids: list[str], names: list[str], how: str) -> None:
    """The drift reference of the line's monitoring (reference.json), from the images tuned on."""
    from steelseg.data.open import open_dataset
    from steelseg.inference.reference import write_reference

    paths = open_dataset(data, names).subset(ids).table["path"].tolist()
    ref = write_reference(bundle, paths, how)
    print(f"drift reference: {ref.images} images -> {bundle / 'reference.json'}")


def _tuned_detection(pred: dict, pp: object, names: list[str]) -> dict | None:
    """Image-level detection at the tuned operating point: from the saved probabilities, or from the
    histograms where the images differ in size (no component size is tuned then, so they are exact)."""
    from steelseg.inference.evaluation import detection_scores
    from steelseg.inference.tune import detected_from_histograms, detected_images

    if "image_score" not in pred:
        return None
    if "probs" in pred:
        found = detected_images(pred["probs"], pp, pred.get("gate"), pred.get("gate_any"))
    else:
        found = detected_from_histograms(pred["hist_all"], pp, pred.get("gate"), pred.get("gate_any"))
    true = pred["hist_true"].sum(axis=2) > 0
    source = "classifier probability" if "gate" in pred else "segmenter maximum probability"
    return detection_scores(pred["image_score"], found, true, names, source)


def detection_table(det: dict) -> str:
    """Image-level detection as a table: AP of the image score, defective images missed, defect-free ones
    flagged, per class and for any defect."""
    rows = [(name, _num(d["ap"]), f"{d['missed']} / {d['defective']}", f"{d['false_alarms']} / {d['defect_free']}",
             _num(d["recall"])) for name, d in [*det["per_class"].items(), ("any defect", det["any"])]]
    return (f"image-level detection (score: {det['score']})\n"
            + table(["class", "AP", "missed", "false alarms", "recall"], rows))


def _num(v: float) -> str:
    return "-" if v is None or v != v else f"{v:.4f}"


def cmd_cv_tune(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import numpy as np

    from steelseg.fsutil import atomic_json
    from steelseg.inference.crosstune import cross_tune, split_by_group
    from steelseg.inference.evaluation import load_predictions

    _check_min_recall(args.min_recall)
    preds = [load_predictions(d) for d in args.eval_dirs]
    names = [str(d) for d in args.eval_dirs]
    if args.inner:  # each model on its own validation images, split into parts of whole groups
        if len(preds) != 1:
            raise SteelsegError("--inner scores one model: give one eval folder (run it once per fold)")
        preds = split_by_group(preds[0], args.inner)
        names = [f"{names[0]} part {k + 1}" for k in range(args.inner)]
    res = cross_tune(preds, names, args.min_recall, scaled=not args.no_scaled)
    rows = []
    for f in res.folds:
        pp = f.chosen
        scale = pp.gate_scale or [1.0] * len(pp.pixel_threshold)  # x s: classifier-scaled threshold
        gate = "-" if pp.gate_threshold is None else "/".join(f"x{s:g}" if s > 1 else f"{g:.2f}"
                                                             for g, s in zip(pp.gate_threshold, scale))
        rows.append((f.name, str(f.images), "/".join(f"{t:.2f}" for t in pp.pixel_threshold),
                     "/".join(str(a) for a in pp.min_area), gate, f"{np.mean(f.oof):.4f}", f"{np.mean(f.own):.4f}",
                     f"{np.mean(f.all_empty):.4f}", f"{f.missed} / {f.defective}", f"{f.false_alarms} / {f.defect_free}"))
    print("each fold scored with the setting tuned on the other folds (out-of-fold) and on itself (optimistic)")
    print(table(["fold", "images", "threshold", "min area", "gate", "dice oof", "dice own", "all-empty",
                 "missed", "false alarms"], rows))
    s = res.summary()
    print(f"\nout-of-fold Dice {s['oof_dice']['mean']:.4f} ± {s['oof_dice']['std']:.4f} (tuned on itself "
          f"{s['own_dice']['mean']:.4f} ± {s['own_dice']['std']:.4f}, all-empty {s['all_empty_dice']['mean']:.4f}); "
          f"missed {s['missed']} of {s['defective']} defective images, flagged {s['false_alarms']} of "
          f"{s['defect_free']} defect-free")
    pooled = res.pooled
    print(f"tuned on every fold pooled (for the fold ensemble): threshold {pooled.pixel_threshold}, "
          f"min area {pooled.min_area}" + ("" if pooled.gate_threshold is None else f", gate {pooled.gate_threshold}"))
    if args.json:
        atomic_json(args.json, {"summary": s, "pooled": asdict(pooled), "min_recall": args.min_recall,
                                "scaled_searched": not args.no_scaled,
                                "folds": [{"eval_dir": f.name, "images": f.images, "chosen": asdict(f.chosen),
                                           "oof_dice": f.oof, "own_dice": f.own, "all_empty_dice": f.all_empty,
                                           "missed": f.missed, "defective": f.defective,
                                           "false_alarms": f.false_alarms, "defect_free": f.defect_free}
                                          for f in res.folds]})
        print(f"wrote {args.json}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from steelseg.inference.bundle import write_bundle

    if args.empty:
        names = class_names(args.class_names)
        if not names:
            raise SteelsegError("--empty needs --class-names (e.g. class1,class2,class3,class4)")
        out = write_bundle(args.out, [], [], None, names, kind="all-empty", overwrite=args.overwrite)
    else:
        if not args.runs:
            raise SteelsegError("give run folders, or --empty for the all-empty baseline")
        out = write_bundle(args.out, args.runs, args.classifier or [], None, None, args.tta, kind="plain",
                           overwrite=args.overwrite, tile=args.tile,
                           overlap=128 if args.overlap is None else args.overlap)
    print(f"bundle written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from steelseg.cli.line import resolve_bundle
    from steelseg.inference.predict import predict_folder

    tta = True if args.tta else (False if args.no_tta else None)
    bundle, _ = resolve_bundle(args.bundle, args.registry)
    if args.engine:
        return predict_archive_cmd(args, bundle, tta)
    res = predict_folder(bundle, args.images, args.out, args.overlays, args.labels, tta,
                         device(args.device), progress=sys.stderr.isatty(), backend=args.backend,
                         threads=args.threads, recursive=args.recursive, tile=args.tile, overlap=args.overlap,
                         prefetch={"on": True, "off": False}.get(args.prefetch), on_error=args.on_error,
                         formats=class_names(args.format) or ())
    if res["skipped_files"]:
        print(f"skipped {len(res['skipped_files'])} file(s) or folder(s) that are not images "
              f"(all listed in predict.json): {', '.join(res['skipped_files'][:20])}"
              + (" ..." if len(res["skipped_files"]) > 20 else ""))
    print(f"wrote {res['submission']} ({res['images']} images x {len(res['class_names'])} classes)")
    if "dice" in res:
        print(f"kaggle dice against --labels: {res['dice']:.4f}")
    for fmt, where in res.get("formats", {}).items():
        print(f"wrote {fmt} pre-annotations: {where} (open it with `steelseg info {where}`, or import it into {fmt})")
    if res["skipped_images"]:
        for s in res["skipped_images"][:20]:
            print(f"skipped {s['image']}: {s['reason']}", file=sys.stderr)
        print(f"warning: {len(res['skipped_images'])} image(s) could not be read and were skipped (all in "
              f"{Path(res['submission']).parent / 'skipped.csv'}): submission.csv is INCOMPLETE, it has no rows for "
              "them (a Kaggle submission would be refused or scored as empty)", file=sys.stderr)
        return 3
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from steelseg.inference.export import export_bundle, load_export_data

    if args.samples < 1 or args.calib < 1 or args.val < 1:
        raise SteelsegError("--samples, --calib and --val must be >= 1")
    from steelseg.fsutil import refuse_existing

    refuse_existing(args.out, args.overwrite, "bundle")
    data = load_export_data(args.bundle, args.data, args.calib, args.val)
    samples = data["val"][:args.samples]
    if args.format == "openvino":
        return _export_openvino(args, data, samples)
    if args.precision not in (None, "fp32") or args.keep_fp32:
        raise SteelsegError("--precision and --keep-fp32 are for --format openvino; ONNX takes --quantize int8")
    quant = bool(args.quantize)
    rep = export_bundle(args.bundle, args.out, samples, args.quantize, data["calib"] if quant else (),
                        data["val"] if quant else (), data["val_masks"] if quant else (), args.max_dice_drop,
                        args.opset, args.overwrite, args.threads)
    for m in rep.models:
        print(f"{m['model']}: model.onnx (opset {m['opset']}, dynamic size: {'yes' if m['dynamic_hw'] else 'no'})")
    same = "masks identical" if rep.masks_identical else \
        f"masks identical but for {rep.threshold_pixels} pixel(s) whose probability is within 1e-3 of the threshold"
    print(f"parity on {len(samples)} images: max |p_onnx - p_torch| = {rep.parity_max_abs:.2e}, {same}")
    if rep.quantize:
        print(f"int8: Kaggle Dice {rep.dice_before:.4f} -> {rep.dice_after:.4f} on {len(data['val'])} validation "
              f"images; {rep.speed_fp32:.2f} -> {rep.speed_int8:.2f} images/s "
              f"({rep.speed_int8 / rep.speed_fp32:.2f}x)")
    print(f"wrote {rep.out} in {rep.seconds:.1f}s (predict with: steelseg predict {rep.out} IMAGES --out DIR)")
    return 0


def _export_openvino(args: argparse.Namespace, data: dict[str, Any], samples: list[Any]) -> int:
    from steelseg.inference.export_openvino import export_openvino

    precision = args.precision or ("int8" if args.quantize else "fp32")
    keep = [n.strip() for n in (args.keep_fp32 or "").split(",") if n.strip()]
    reduced = precision != "fp32"
    rep = export_openvino(args.bundle, args.out, samples, precision, data["calib"] if reduced else (),
                          data["val"] if reduced else (), data["val_masks"] if reduced else (), args.max_dice_drop,
                          args.threads, args.overwrite, args.opset, keep)
    same = "masks identical" if rep.masks_identical else \
        f"masks identical but for {rep.threshold_pixels} pixel(s) whose probability is within 1e-3 of the threshold"
    print(f"OpenVINO IR parity on {len(samples)} images: max |p_ov - p_torch| = {rep.parity_max_abs:.2e}, {same}")
    if reduced:
        print(f"{precision}: Kaggle Dice {rep.dice_before:.4f} -> {rep.dice_after:.4f} on {len(data['val'])} "
              f"validation images; {rep.speed_fp32:.2f} -> {rep.speed_int8:.2f} images/s "
              f"({rep.speed_int8 / rep.speed_fp32:.2f}x)")
    if precision.startswith("int8"):
        kept = json.loads((Path(args.out) / "bundle.json").read_text())["export"].get("fp32_layers", {})
        for model, layers in kept.items():
            print(f"{model}: {len(layers)} layer(s) kept out of int8" + (f": {', '.join(layers[:8])}"
                                                                     + (" ..." if len(layers) > 8 else "")
                                                                     if layers else ""))
    print(f"wrote {rep.out} in {rep.seconds:.1f}s (predict with: steelseg predict {rep.out} IMAGES --out DIR)")
    return 0


def _add_bundle_out_args(p: argparse.ArgumentParser) -> None:
    """What tune and bundle share: the bundle to write, --overwrite, and the tiling saved in it."""
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (swapped in when complete)")
    add_tile_args(p, "saved in the bundle; default: whole images")


def _register_cv_tune(sub: Any) -> None:
    p = sub.add_parser("cv-tune", help="honest score of tuning under k-fold CV (tune on the other folds)",
                       description="Given the saved validation predictions of every fold (`steelseg evaluate` "
                                   "of each fold's run), score each fold with the thresholds / minimum areas / "
                                   "gates tuned on the other folds pooled, beside the optimistic score tuned on "
                                   "itself; print the setting tuned on all folds pooled (for the fold ensemble).")
    p.add_argument("eval_dirs", nargs="+", type=Path, help="one eval folder per fold (RUN/eval-val)")
    p.add_argument("--min-recall", type=float, default=None, metavar="R", help="as in `steelseg tune`")
    p.add_argument("--inner", type=int, default=None, metavar="K",
                   help="score one model instead: split its eval folder into K parts of whole groups (the first "
                        "folder of each image id) and score each part tuned on the others")
    _add_no_scaled(p)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(func=cmd_cv_tune)


def _add_no_scaled(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-scaled", action="store_true",
                   help="with a classifier (or a two-head model): search hard gates only, not classifier-scaled "
                        "pixel thresholds t0*(s-(s-1)*p); to measure what the scaled thresholds add")


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("evaluate", help="score models or a bundle on a labelled split",
                       description="Predict a split once, report Kaggle mean Dice (overall, per class, "
                                   "vs the all-empty baseline), IoU per class, classifier precision/recall; "
                                   "save metrics.json, per_image.csv and predictions.npz for tuning.")
    add_pipeline_args(p, "*")
    p.add_argument("--bundle", default=None, help="evaluate a bundle (with its post-processing) instead")
    add_backend_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/eval-SPLIT)")
    add_eval_engine_args(p)
    p.set_defaults(func=cmd_evaluate, reads={"runs": True, "bundle": True, "classifier": True, "data": False})

    p = sub.add_parser("tune", help="tune thresholds / minimum areas / gates and write a bundle",
                       description="Search per-class pixel thresholds, minimum mask areas and classifier "
                                   "gates on validation predictions to maximise Kaggle mean Dice; write a "
                                   "bundle for `steelseg predict`.")
    add_pipeline_args(p, "+")
    p.add_argument("--eval-dir", default=None, help="saved predictions (default RUN/eval-SPLIT)")
    p.add_argument("--min-recall", type=float, default=None, metavar="R",
                   help="keep only settings that still give a mask to at least this share of the defective "
                        "validation images of each class (1.0: miss none; a missed crack costs more than a "
                        "second look)")
    _add_no_scaled(p)
    _add_bundle_out_args(p)
    p.set_defaults(func=cmd_tune, reads={"runs": True, "classifier": True, "data": False})

    _register_cv_tune(sub)

    p = sub.add_parser("bundle", help="pack models without tuning (plain baseline) or the all-empty baseline",
                       description="Write a bundle with threshold 0.5 and no minimum area (the plain "
                                   "single-model baseline), or --empty for the all-empty baseline.")
    p.add_argument("runs", nargs="*", help="segmenter run folders")
    p.add_argument("--classifier", action="append", help="gating classifier run folder")
    p.add_argument("--empty", action="store_true", help="the all-empty baseline bundle")
    p.add_argument("--class-names", default=None, help="class names for --empty")
    p.add_argument("--tta", action="store_true", help="use flip TTA when predicting")
    _add_bundle_out_args(p)
    p.set_defaults(func=cmd_bundle, reads={"runs": True, "classifier": True})

    p = sub.add_parser("predict", help="predict a folder of images to submission.csv (+ overlays)",
                       description="Run a bundle over every image in IMAGES and write OUT/submission.csv "
                                   "(ImageId,EncodedPixels,ClassId; written atomically) and optional overlays.")
    p.add_argument("bundle", help="bundle folder (steelseg tune / steelseg bundle), or models:/LINE@champion")
    p.add_argument("images", help="folder of images (with --engine: a folder tree, a glob such as 'shift*/**/*.jpg', a "
                                  "manifest of paths, .txt one a line or .parquet with a 'path' column, or a URI "
                                  "such as s3://bucket/prefix read through pyarrow)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_engine_args(p)
    p.add_argument("--overlays", action="store_true", help="save PNG overlays of the predicted masks")
    p.add_argument("--labels", default=None, help="labelled dataset: ground truth beside overlays, and Dice")
    p.add_argument("--tta", action="store_true", help="force flip TTA on")
    p.add_argument("--no-tta", action="store_true", help="force flip TTA off")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto")
    p.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                   help="an unreadable image (truncated, empty, too large): stop with its name and write nothing "
                        "(default), or skip it, list it in OUT/skipped.csv and exit with status 3")
    p.add_argument("--recursive", action="store_true",
                   help="read subfolders too (ImageId is then the path under IMAGES, e.g. line2/a.jpg)")
    p.add_argument("--prefetch", default="auto", choices=["auto", "on", "off"], help="decode the next images in a "
                   "thread while the model runs (auto: on with more than 2 cores; bench/predict_stream.py measures it)")
    p.add_argument("--format", default=None, metavar="F[,F...]",
                   help="with --engine: parquet (default) or csv rows. Without: also write the predictions as "
                        "pre-annotations for a labelling tool, in OUT/<format> with the "
                        "images: labelme, yolo, cvat, labelstudio (or coco, masks); comma-separated for several. "
                        "Import the folder into the tool and correct what the model got wrong")
    p.add_argument("--registry", default=None, metavar="URI", help="MLflow registry of a models:/ bundle")
    add_tile_args(p, "default: the bundle's setting, else whole images")
    add_backend_args(p)
    p.set_defaults(func=cmd_predict, reads={"bundle": False, "images": False, "labels": False})

    _register_export(sub)


def _register_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write a bundle as ONNX (optionally int8) for fast CPU inference",
                       description="Export every model of BUNDLE to ONNX (probabilities out, dynamic batch "
                                   "and image size where the architecture allows) into a new bundle. Parity "
                                   "with PyTorch is checked on sample images first: any difference in "
                                   "probabilities beyond 1e-3 or in the final masks fails and writes nothing. "
                                   "--quantize int8 calibrates on the training images, scores Kaggle Dice "
                                   "on validation images before and after, and refuses a larger drop than "
                                   "--max-dice-drop.", epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder with PyTorch models (steelseg tune / steelseg bundle)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="export format: onnx (ONNX "
                   "Runtime) or openvino (OpenVINO IR; the openvino extra)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "int8", "int8-bf16"], help="openvino: fp32 "
                   "(default), bf16 (AVX-512 BF16 / AMX CPUs), int8 (NNCF; layers that cost Dice stay fp32) or "
                   "int8-bf16 (int8, the layers left out of it in bf16: the fastest on such CPUs); all but fp32 are "
                   "refused past --max-dice-drop")
    p.add_argument("--keep-fp32", default=None, help="openvino int8: comma-separated layer names to keep in fp32 from "
                   "the start (an earlier export's bundle.json export.fp32_layers)")
    p.add_argument("--quantize", default=None, choices=["int8"], help="static int8 quantisation (QDQ, per-channel)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--data", default=None, help="labelled dataset for samples, calibration and validation "
                   "(default: the data the models were trained on)")
    p.add_argument("--samples", type=int, default=4, help="images for the parity check (default 4)")
    p.add_argument("--calib", type=int, default=32, help="calibration images for int8 (default 32)")
    p.add_argument("--val", type=int, default=64, help="validation images scored before/after int8 (default 64)")
    p.add_argument("--max-dice-drop", type=float, default=0.005, help="largest Dice drop int8 / bf16 may cost (default 0.005)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime / OpenVINO threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bundle")
    p.set_defaults(func=cmd_export, reads={"bundle": False, "data": False})
