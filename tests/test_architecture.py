"""The house in wings: the package's own imports (read with ``ast``, function-level ones included) form
no loop and never go upward, no room grows past ~450 lines nor a function past ~80, and the predict path
imports neither Lightning nor MLflow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import tiny_bundle_at

PKG = Path(__file__).resolve().parents[1] / "src" / "steelseg"

# wing -> the wings it may import (besides itself). The ground floor (errors, fsutil, schema, metrics,
# machine, viz, lazy) imports no wing; data never imports models or training; inference never imports
# training; nothing imports cli except demo.
GROUND = "ground"
ALLOWED = {
    GROUND: set(),
    "data": {GROUND},
    "models": {GROUND, "data"},
    "training": {GROUND, "data", "models"},
    "inference": {GROUND, "data", "models"},
    "serve": {GROUND, "data", "models", "inference", "line"},  # line: the registry a followed bundle comes from
    "line": {GROUND, "data", "models", "inference"},
    "kaggle": {GROUND, "data", "models", "inference"},
    "engine": {GROUND, "data", "models", "inference"},  # archive prediction: local or Ray, behind one seam
    "reports": {GROUND, "data", "models", "training", "inference"},
    "planning": {GROUND, "data", "models", "training", "inference", "reports", "engine"},  # engine: folds on Ray
    "cli": {GROUND, "data", "models", "training", "inference", "serve", "line", "reports", "kaggle", "planning",
            "engine"},
    "demo": {GROUND, "cli"},
}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
# the sample table knows no format: each layout hands it its own decoder; of the data wing it reads pixels only
TABLE_MAY_IMPORT_FROM_DATA = {"steelseg.data.images"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return GROUND
    if parts[1] == "demo":
        return "demo"
    return parts[1] if (PKG / parts[1]).is_dir() else GROUND


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports anywhere in its file (``from a import b`` is ``a.b`` when
    that is a module, else ``a``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against this module's package
                pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{node.module}"
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # import steelseg.data.rle as x -> the module itself
                name = name.rpartition(".")[0]
            if name.startswith("steelseg") and name != module:
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_package_has_wings() -> None:
    wings = {_wing(m) for m in MODULES}
    assert {"data", "models", "training", "inference", "serve", "reports", "cli"} <= wings
    assert set(ALLOWED) >= wings, f"a new wing needs its place in ALLOWED: {wings - set(ALLOWED)}"


def test_nothing_imports_upward() -> None:
    bad = [f"{m} ({_wing(m)}) imports {d} ({_wing(d)})" for m, deps in GRAPH.items() for d in sorted(deps)
           if _wing(d) != _wing(m) and _wing(d) not in ALLOWED[_wing(m)]]
    assert not bad, "\n".join(bad)


def test_the_sample_table_imports_no_layout() -> None:
    from_data = {m for m in GRAPH["steelseg.data.table"] if _wing(m) == "data"}
    assert from_data <= TABLE_MAY_IMPORT_FROM_DATA, from_data
    assert GRAPH["steelseg.data.table"], "the import reader found nothing: the check would pass on anything"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_loops() -> None:
    assert not _cycles(GRAPH), _cycles(GRAPH)


def test_the_loop_finder_finds_loops() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_room_too_long() -> None:
    long_modules = [f"{m}: {len(p.read_text().splitlines())} lines" for m, p in MODULES.items()
                    if len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    long_functions = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


PREDICT_PATH = """
import json, sys
import numpy as np
import steelseg.inference
from steelseg.inference import Predictor, predict_folder
from PIL import Image
bundle, images, out = sys.argv[1:4]
pred = Predictor.from_bundle(bundle)
masks = pred.predict([np.zeros((64, 96), np.uint8)])[0].masks
res = predict_folder(bundle, images, out)
print(json.dumps({"shape": list(masks.shape), "images": res["images"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning",
                                                                                 "mlflow", "albumentations"))}))
"""


@pytest.fixture(scope="module")
def tiny_torch_bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("predict_path"), ["a", "b"])


def test_import_inference_loads_no_training_stack() -> None:
    code = ("import sys, steelseg.inference, steelseg.data, steelseg.models\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'mlflow', "
            "'torch', 'albumentations')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out  # not even torch: the ONNX path never needs it


def test_predict_path_loads_no_training_stack(tiny_torch_bundle, tmp_path) -> None:
    """(wandb is not checked: timm itself imports it where it is installed, as in the dev extra.)"""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((64, 96), 128, np.uint8)).save(images / "a.png")
    proc = subprocess.run([sys.executable, "-c", PREDICT_PATH, str(tiny_torch_bundle), str(images),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["shape"] == [64, 96, 2] and res["images"] == 1
    assert res["loaded"] == [], f"the predict path imported {res['loaded']}"
    assert (tmp_path / "out" / "submission.csv").is_file()


def test_the_public_api_lives_in_its_wings() -> None:
    from steelseg.data import open_dataset
    from steelseg.inference import Predictor
    from steelseg.models import create_segmenter
    from steelseg.training import fit, load_config

    assert callable(open_dataset) and callable(Predictor.from_bundle) and callable(create_segmenter)
    assert callable(fit) and callable(load_config)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import steelseg.inference as inf

        inf.nothing  # noqa: B018

