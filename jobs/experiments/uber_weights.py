"""Uber weights from the ablations (seed 000 "Workflow for Uber": ablate first, then mix).

A suite's ``weights_from`` names, per part (``source``: sersic / hybrid / cosmos / deep; ``artifact``:
none / mild / strong), the ablation whose arms stand for the components (``comparison``: a
``comparison.json`` path relative to the parent of the suite's ``--out``, or ``self`` for this suite's
own) and the metric (default ``anchor_auroc``: real lenses against real non-lenses).

The rule, per part:

* **weighted** when the evidence separates the arms: every component has the metric with a 95 %
  bootstrap CI, the best arm is above chance, and at least one pair of arms has disjoint CIs.
  Then ``w ∝ max(m - chance, floor)`` (``chance = 0.5``, the AUC of a coin; ``floor = 0.01``, every
  component stays in the mix): skill above chance, not the raw AUC.
* **fallback** otherwise (no anchor set, a missing comparison, every arm at or below chance, or all
  CIs overlapping): the seed's default weights from ``configs/uber.yaml`` (a component the seed does not
  mix gets 0), and the file says which condition failed. Never a silent uniform mix.

:func:`write_uber_preset` writes ``uber_from_ablations.yaml``: a preset ``dhs manifest --config`` runs
as it is (``extends: uber``), whose ``notes`` carry the rule, the decision and the evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dhs_gen.errors import ConfigError, check_config_range
from dhs_gen.json_values import finite_float
from jobs.runtime import storage
from jobs.runtime.config import ARTIFACT_PROFILES, read_config_dict

#: The mixer's source modes (``jobs.runtime.config.SOURCE_MODES``), in the order a preset written here lists them;
#: artifact weights follow ``ARTIFACT_PROFILES``, the order of ``artifact_mix``.
SOURCE_COMPONENTS = ("sersic", "hybrid", "cosmos", "deep")
PRESET_FILE = "uber_from_ablations.yaml"
#: Metrics an arm can be weighed by; each comes with a 95 % CI, which the separation test needs.
METRICS = ("anchor_auroc", "auc")


def component_metric(comparison: dict, variant: str, metric: str) -> tuple[float | None, list | None]:
    """(value, 95 % CI or None) of ``anchor_auroc`` (real anchors) or ``auc`` (the arm's own synthetic test set)."""
    m = comparison["metrics"][variant]
    if metric == "anchor_auroc":
        a = m.get("anchor") or {}
        return finite_float(a.get("auroc_anchor")), a.get("auroc_ci95")
    if metric == "auc":
        return finite_float(m.get("auc")), m.get("auc_ci95")
    raise ConfigError("weights_from.metric", metric, f"one of {list(METRICS)}")


def check_weights_from(spec) -> dict:
    """``weights_from`` of a suite, checked when the suite loads (not after its arms have run)."""
    if not isinstance(spec, dict):
        raise ConfigError("weights_from", spec, "a mapping: {source: {...}, artifact: {...}, chance, floor}")
    unknown = sorted(set(spec) - {"source", "artifact", "chance", "floor"})
    if unknown:
        raise ConfigError(f"weights_from.{unknown[0]}", spec[unknown[0]], "one of source, artifact, chance, floor")
    for name in ("chance", "floor"):
        if name in spec:
            check_config_range(f"weights_from.{name}", spec[name], 0, 1)
    for part, allowed in (("source", SOURCE_COMPONENTS), ("artifact", ARTIFACT_PROFILES)):
        p = spec.get(part)
        if p is None:
            continue
        if not isinstance(p, dict) or not isinstance(p.get("comparison"), str) or not isinstance(p.get("components"), dict):
            raise ConfigError(f"weights_from.{part}", p, "{comparison: <path or self>, components: {component: variant}, "
                              "metric: anchor_auroc | auc}")
        comps = p["components"]
        if len(comps) < 2:
            raise ConfigError(f"weights_from.{part}.components", comps, "at least two arms: weights compare arms")
        for comp, variant in comps.items():
            if comp not in allowed or not isinstance(variant, str):
                raise ConfigError(f"weights_from.{part}.components.{comp}", variant,
                                  f"a component among {list(allowed)} mapped to a variant name")
        if p.get("metric", "anchor_auroc") not in METRICS:
            raise ConfigError(f"weights_from.{part}.metric", p["metric"], f"one of {list(METRICS)}")
    return spec


def uber_weights(values: dict, chance: float = 0.5, floor: float = 0.01) -> dict:
    """``{component: w}`` (sum 1) with ``w ∝ max(m - chance, floor)`` from ``{component: m}``."""
    raw = {c: max(v - chance, floor) for c, v in values.items()}
    total = sum(raw.values())
    return {c: round(r / total, 6) for c, r in raw.items()}


def seed_default_weights(part: str, components) -> dict:
    """The seed's default mix (``configs/uber.yaml``) over ``components``; those it does not mix get 0."""
    uber = read_config_dict("uber")
    if part == "source":
        src = uber["source"]
        given = dict(zip(src["mix_modes"], src["mix_probs"], strict=True))
    else:
        given = dict(zip(ARTIFACT_PROFILES, uber["artifact_mix"], strict=True))
    w = {c: float(given.get(c, 0.0)) for c in components}
    total = sum(w.values())
    return {c: round(v / total, 6) for c, v in w.items()} if total > 0 else w


def _is_ci(ci) -> bool:
    return (isinstance(ci, list | tuple) and len(ci) == 2
            and all(finite_float(x) is not None for x in ci) and ci[0] <= ci[1])


def _disjoint(a: list, b: list) -> bool:
    return a[1] < b[0] or b[1] < a[0]


def decide(part: str, comparison: dict | None, components: dict, metric: str, chance: float, floor: float,
           missing: str = "") -> dict:
    """The weights of one part, the decision (``weighted`` | ``fallback``), the reason and the evidence."""
    evidence, reason = {}, missing
    if comparison is not None:
        for comp, variant in components.items():
            if variant not in comparison.get("variants", []):
                raise ConfigError(f"weights_from.{part}.components.{comp}", variant,
                                  f"a variant of {comparison.get('variants')}")
            value, ci = component_metric(comparison, variant, metric)
            evidence[comp] = {"variant": variant, metric: value, "ci95": ci}
        values = {c: e[metric] for c, e in evidence.items()}
        cis = {c: e["ci95"] for c, e in evidence.items()}
        if any(v is None for v in values.values()):
            reason = f"no {metric} for {sorted(c for c, v in values.items() if v is None)} (no real anchor set?)"
        elif not all(_is_ci(ci) for ci in cis.values()):
            reason = f"no 95 % CI of {metric} for every arm: the evidence cannot be judged"
        elif max(values.values()) <= chance:
            reason = f"every arm's {metric} is at or below chance ({chance}): no arm shows skill"
        elif not any(_disjoint(cis[a], cis[b]) for a in cis for b in cis if a < b):
            reason = f"the 95 % CIs of {metric} overlap for every pair of arms: the arms are not separated"
    if reason:
        return {"decision": "fallback", "reason": reason, "weights": seed_default_weights(part, components),
                "fallback": "the seed's default weights (configs/uber.yaml); components it does not mix get 0",
                "metric": metric, "evidence": evidence}
    return {"decision": "weighted", "reason": f"arms separated by {metric}",
            "weights": uber_weights({c: e[metric] for c, e in evidence.items()}, chance, floor),
            "metric": metric, "evidence": evidence}


def uber_from_ablations(weights_from: dict, root: Path, require: bool = False) -> dict:
    """Per part of ``weights_from``, :func:`decide` on its comparison, plus the rule.

    ``require``: a missing comparison is an error (the uber arm of a suite cannot run without its
    evidence) instead of a fallback.
    """
    check_weights_from(weights_from)
    chance, floor = float(weights_from.get("chance", 0.5)), float(weights_from.get("floor", 0.01))
    out = {"rule": f"w ∝ max(m - {chance}, {floor}) when the arms are separated (best arm above chance, "
                   "some pair of 95 % CIs disjoint); else the seed's defaults (configs/uber.yaml), said as fallback",
           "parts": {}}
    for part in ("source", "artifact"):
        spec = weights_from.get(part)
        if not spec:   # the preset still needs this part's weights: the seed's, said so
            components = SOURCE_COMPONENTS if part == "source" else ARTIFACT_PROFILES
            out["parts"][part] = decide(part, None, {c: None for c in components}, "anchor_auroc", chance, floor,
                                        f"weights_from names no {part} ablation") | {"comparison": None, "banks": {}}
            continue
        components = dict(spec["components"])
        name = spec["comparison"]
        path = Path(root) / "comparison.json" if name == "self" else Path(name)
        if not path.is_absolute():
            path = Path(root).resolve().parent / path
        comparison, missing = None, ""
        if path.is_file():
            comparison = json.loads(path.read_text())
        elif require:
            raise ConfigError(f"weights_from.{part}.comparison", str(path),
                              "an existing comparison.json: run that ablation suite first (seed: ablate, then mix)")
        else:
            missing = f"{path} not found: run that ablation suite first"
        metric = spec.get("metric", "anchor_auroc")
        out["parts"][part] = decide(part, comparison, components, metric, chance, floor, missing) | {
            "comparison": str(path), "banks": (comparison or {}).get("provenance", {}).get("banks", {})}
    return out


def mix_overrides(result: dict, banks: dict | None = None) -> dict:
    """Injection-config overrides (source and artifact mixtures, banks) of :func:`uber_from_ablations`.

    A cosmos or deep component needs a bank: the one its ablation used, else ``banks`` (this suite's).
    A component with weight but no bank is left out of the mix (renormalised) and recorded in the
    source part's ``dropped_no_bank``, so the preset runs as written and says what it lacks.
    """
    over: dict = {}
    src = result["parts"].get("source")
    if src:
        known = {k: v for k, v in {**(banks or {}), **src["banks"]}.items() if v}
        w = {c: v for c, v in src["weights"].items() if v > 0}
        dropped = sorted(c for c in w if c in ("cosmos", "deep") and c not in known)
        src["dropped_no_bank"] = dropped
        w = {c: v for c, v in w.items() if c not in dropped}
        if not w:   # every weighted mode needs a bank none was given: hybrid needs none, and says so
            w = {"hybrid": 1.0}
            src["no_bank_fallback"] = "every weighted source mode needs a bank and none was known: hybrid alone"
        total = sum(w.values())
        over["source"] = {"mode": "mix", "mix_modes": list(w), "mix_probs": [round(v / total, 6) for v in w.values()]}
        over["source"].update({f"{c}_bank": known[c] for c in w if c in known})
    art = result["parts"].get("artifact")
    if art:
        over.update(artifact_profile="mix", artifact_mix=[art["weights"].get(a, 0.0) for a in ARTIFACT_PROFILES])
    return over


def summary(result: dict) -> str:
    """One line per part: decision, weights, reason."""
    return "; ".join(f"{part}: {p['decision']} {p['weights']} ({p['reason']})" for part, p in result["parts"].items())


def write_uber_preset(result: dict, root: Path, suite_name: str, banks: dict | None = None) -> str:
    """``<root>/uber_from_ablations.yaml``: ``extends: uber`` + the mixtures, with the rule and evidence in
    ``notes``. Runs as ``dhs manifest --config <root>/uber_from_ablations.yaml``."""
    over = mix_overrides(result, banks)
    preset = {"extends": "uber", "name": "uber_from_ablations", "generation": "uber",
              "description": f"Uber mixture weighted by the ablations (written by dhs ablate --suite {suite_name})",
              **over, "notes": json.loads(json.dumps(result, default=str))}
    lines = [f"# Uber preset from the ablations (dhs ablate --suite {suite_name}); {summary(result)}"]
    for mode in result["parts"].get("source", {}).get("dropped_no_bank", []):
        lines.append(f"# {mode} has weight but no bank was known: left out of the mix; add it to source.mix_modes "
                     f"with source.{mode}_bank (dhs {mode}-bank) to restore it")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(preset, sort_keys=False, allow_unicode=True, width=110)
    uri = str(Path(root) / PRESET_FILE)
    storage.write_bytes(uri, text.encode())
    return uri
