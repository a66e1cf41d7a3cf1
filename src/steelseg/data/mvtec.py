"""The ``mvtec`` layout (MVTec AD, the layout of anomaly-detection toolkits): ``train/good/``,
``test/<defect>/`` and ``ground_truth/<defect>/<id>_mask.png``; splits ``train`` and ``test``."""

from __future__ import annotations

from pathlib import Path

from steelseg.data.folders import is_image
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.table import DefectDataset
from steelseg.errors import DataError

__all__ = ["detect", "open_mvtec"]


def detect(root: Path) -> bool:
    return (root / "test").is_dir() and ((root / "ground_truth").is_dir() or (root / "train" / "good").is_dir())


def open_mvtec(root: Path, class_names: list[str] | None, progress: bool) -> DefectDataset:
    test, gt = root / "test", root / "ground_truth"
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good")
    classes = list(class_names) if class_names else defects
    unknown = sorted(set(defects) - set(classes))
    if unknown:
        raise DataError(f"{test}: defect folder(s) {unknown} not among the class names {classes}")
    entries, splits, skipped = [], {"train": [], "test": []}, []
    for split, folder in (("train", root / "train" / "good"), ("test", test / "good")):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if is_image(p):
                    image_id = p.relative_to(root).as_posix()
                    entries.append((image_id, p, []))
                    splits[split].append(image_id)
    for name in defects:
        folder = test / name
        images = [p for p in sorted(folder.iterdir()) if is_image(p)]
        if not images:
            raise DataError(f"{folder}: empty defect folder")
        for p in images:
            mask = next((gt / name / f"{p.stem}{s}" for s in ("_mask.png", ".png", "_mask.bmp")
                         if (gt / name / f"{p.stem}{s}").is_file()), None)
            if mask is None:
                raise DataError(f"{p}: no mask {gt / name / (p.stem + '_mask.png')}")
            image_id = p.relative_to(root).as_posix()
            entries.append((image_id, p, [(classes.index(name), mask, str(mask))]))
            splits["test"].append(image_id)
        if (gt / name).is_dir():
            known = {p.stem for p in images}
            for m in sorted((gt / name).iterdir()):
                stem = m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem
                if is_image(m) and stem not in known:
                    raise DataError(f"{m}: mask without an image (no {folder / stem}.*)")
    return build_from_items(root, "mvtec", classes, entries, {k: v for k, v in splits.items() if v}, skipped, progress)




LAYOUT = Layout("mvtec", lambda req: detect(req.root), lambda req: open_mvtec(req.root, req.class_names, req.progress),
                rank=1, describe="train/good + test/<defect> + ground_truth/ (mvtec)")
