"""The SmolLM2 study's addendum of 2026-12-07 (docs/BENCHMARKS.md): its report, from the rescored runs.

    python benchmarks/smollm2_study.py --stage addendum      # OUT/addendum.json and the tables

It reads every `addendum-lr<rate>/` folder under OUT (benchmarks/results/smollm2_heldout): each run's
`rescore.json` (its final adapter on every clean reference) and `result.json` (its own 120-reference
curve). A comparison is SIBO − plain held-out loss at the last step, over the seeds both arms finished,
with the addendum's two-level bootstrap (seeds and references resampled together), its p-value, Holm's
correction over every comparison on all references, and the verdict by the rule fixed before the runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from smollm2_protocol import ARMS, PRIMARY

from sibo.study.heldout import Reference
from sibo.study.stats import (
    Interval,
    bootstrap_p_value,
    holm,
    seeds_needed,
    two_level_bootstrap,
    two_level_draws,
    variance_components,
)

MARGIN = 0.002  # nats per token, fixed in the addendum before its runs
RESAMPLES = 10_000
TUNING_AT_3E3 = 0.4011  # the committed tuning run's loss at step 160 (tune-lora-lr0.003)


def verdict(interval: Interval, seeds_to_decide: float, margin: float = MARGIN) -> str:
    """The addendum's rule: below 0 lowers, above 0 raises, inside ±margin equivalent (both may be said);
    otherwise undecided, with about how many seeds would decide it."""
    said = []
    if interval.high < 0:
        said.append("SIBO lowers held-out loss")
    elif interval.low > 0:
        said.append("SIBO raises held-out loss")
    if -margin <= interval.low and interval.high <= margin:
        said.append(f"equivalent within ±{margin:g}")
    if said:
        return "; ".join(said)
    if math.isnan(seeds_to_decide):
        return "undecided (one seed: how many would decide it is unknown)"
    if math.isinf(seeds_to_decide):
        return "undecided; more seeds would not decide it, more references would"
    return f"undecided; about {int(seeds_to_decide)} seeds would decide it"


def reference_sets(references: list[Reference], near: set[str], right: set[str], first: list[str]) -> dict:
    """The keys each measure averages over: every clean reference less the near copies, those of them
    whose rationale ends in the right answer, and the first 120 (the runs' own curve)."""
    kept = [r.key for r in references if r.key not in near]
    return {"all": kept, "right answer": [k for k in kept if k in right], "first 120": first}


def right_answers(references: list[Reference], benchmarks) -> set[str]:
    """The references whose rationale's answer, read as the math sets read a model's, is the label."""
    examples = {f"{task.name}/{e.index}": (task, e) for task, chosen in benchmarks for e in chosen}
    right = set()
    for reference in references:
        task, example = examples[reference.key]
        if task.is_correct(task.extract(reference.output, example), example.label):
            right.add(reference.key)
    return right


def compare(
    runs: dict[str, dict], sibo: str, plain: str, keys: list[str], measure: str = "rationale"
) -> dict:
    """SIBO − plain on `keys` at the last step, over the seeds both arms rescored."""
    seeds = sorted(
        run["run"]["seed"] for run in runs.values() if run["run"]["arm"] == plain and "rescore" in run
    )
    seeds = [s for s in seeds if f"{sibo}_seed{s}" in runs and "rescore" in runs[f"{sibo}_seed{s}"]]
    if not seeds:
        return {}
    matrix = {
        arm: np.array([scores(runs[f"{arm}_seed{s}"], keys, measure) for s in seeds]) for arm in (sibo, plain)
    }
    interval = two_level_bootstrap(matrix[sibo], matrix[plain], RESAMPLES)
    seed_variance, record_variance = variance_components(matrix[sibo], matrix[plain])
    return {
        "sibo": sibo,
        "plain": plain,
        "seeds": seeds,
        "per_seed": (matrix[sibo] - matrix[plain]).mean(axis=1).tolist(),
        "interval": interval.as_dict(),
        "p": bootstrap_p_value(two_level_draws(matrix[sibo], matrix[plain], RESAMPLES)),
        "seeds_to_decide": seeds_needed(interval.difference, seed_variance, record_variance, MARGIN),
    }


def scores(run: dict, keys: list[str], measure: str) -> list[float]:
    """One run's losses on `keys`, from its rescoring (which scores the first 120 too)."""
    rescored = run["rescore"]["references"]
    position = {key: k for k, key in enumerate(rescored["keys"])}
    return [rescored[measure][position[key]] for key in keys]


def change_from_start(runs: dict[str, dict], sibo: str, plain: str) -> dict:
    """AdapterH's exploratory comparison: (last − step 0) of SIBO − plain on the runs' own 120 references,
    since untrained bottleneck adapters already act and SIBO changes what they read."""
    seeds = sorted(r["run"]["seed"] for r in runs.values() if r["run"]["arm"] == plain)
    seeds = [s for s in seeds if f"{sibo}_seed{s}" in runs]
    if not seeds:
        return {}

    def change(run: dict) -> list[float]:
        last = str(max(int(step) for step in run["points"]))
        return (
            np.array(run["points"][last]["rationale"]) - np.array(run["points"]["0"]["rationale"])
        ).tolist()

    a = np.array([change(runs[f"{sibo}_seed{s}"]) for s in seeds])
    b = np.array([change(runs[f"{plain}_seed{s}"]) for s in seeds])
    interval = two_level_bootstrap(a, b, RESAMPLES)
    return {"sibo": sibo, "plain": plain, "seeds": seeds, "interval": interval.as_dict(), "exploratory": True}


def reproduced(runs: dict[str, dict], committed: Path) -> dict[str, float]:
    """Per rerun of a committed run: the largest difference of its held-out losses from the committed ones."""
    differences = {}
    for name, run in runs.items():
        file = committed / "runs" / name / "result.json"
        if not file.is_file():
            continue
        before = json.loads(file.read_text())
        differences[name] = max(
            abs(x - y)
            for step, point in run["points"].items()
            for measure in ("rationale", "answer")
            for x, y in zip(point[measure], before["points"][step][measure], strict=True)
            if not (math.isnan(x) or math.isnan(y))
        )
    return differences


def read_runs(folder: Path) -> dict[str, dict]:
    """A folder's finished arm runs, each with its rescoring where it has one."""
    runs = {}
    for file in sorted((folder / "runs").glob("*/result.json")):
        run = json.loads(file.read_text())
        if run["run"]["tuning"]:
            continue
        if (rescored := file.with_name("rescore.json")).is_file():
            run["rescore"] = json.loads(rescored.read_text())
        runs[file.parent.name] = run
    return runs


def summarize(folders: dict[str, Path], sets: dict[str, list[str]], committed: Path) -> dict:
    """Every comparison in every folder, Holm over those on all references, verdicts, and the checks."""
    summary = {"margin": MARGIN, "references": {name: len(keys) for name, keys in sets.items()}, "rates": {}}
    on_all = []
    for rate, folder in folders.items():
        runs = read_runs(folder)
        plain_seed0 = runs.get("lora_seed0", {}).get("rescore")
        row = {
            "reproduced": reproduced(runs, committed),
            "tuning_loss": float(np.mean(plain_seed0["tuning"]["rationale"])) if plain_seed0 else None,
            "comparisons": [],
        }
        for sibo, arm in ARMS.items():
            if arm.plain is None:
                continue
            if arm.adapter == "bottleneck":
                if found := change_from_start(runs, sibo, arm.plain):
                    row["comparisons"].append({**found, "measure": "change from step 0, first 120"})
                continue
            for name, keys in sets.items():
                if found := compare(runs, sibo, arm.plain, keys):
                    found = {
                        **found,
                        "references": name,
                        "primary": (sibo, arm.plain) == PRIMARY and rate == "3e-3",
                    }
                    row["comparisons"].append(found)
                    if name == "all":
                        on_all.append(found)
        summary["rates"][rate] = row
    for found, adjusted in zip(on_all, holm([c["p"] for c in on_all]), strict=True):
        found["p_holm"] = adjusted
    for row in summary["rates"].values():
        for found in row["comparisons"]:
            if "p" in found:
                found["verdict"] = verdict(Interval(**found["interval"]), found["seeds_to_decide"])
    return summary


def tables(summary: dict) -> str:
    """The report as markdown: one row per comparison, then the checks."""
    lines = [
        "| lr | SIBO − plain | references | seeds | difference [95 % seeds × references] | p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, row in summary["rates"].items():
        for c in row["comparisons"]:
            i = c["interval"]
            p = f"{c['p']:.3g}" if "p" in c else "-"
            holm_p = f"{c['p_holm']:.3g}" if "p_holm" in c else "-"
            lines.append(
                f"| {rate} | {c['sibo']} − {c['plain']}{' (primary)' if c.get('primary') else ''} | "
                f"{c.get('references', c.get('measure'))} | {len(c['seeds'])} | "
                f"{i['difference']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] | {p} | {holm_p} | "
                f"{c.get('verdict', 'exploratory')} |"
            )
    lines.append("")
    for rate, row in summary["rates"].items():
        tuning = "-" if row["tuning_loss"] is None else f"{row['tuning_loss']:.4f}"
        worst = max(row["reproduced"].values(), default=None)
        lines.append(
            f"lr {rate}: tuning-slice loss of lora seed 0 {tuning}; reruns of committed runs: "
            f"{len(row['reproduced'])}, largest difference {'-' if worst is None else f'{worst:.2g}'}"
        )
    return "\n".join(lines)
