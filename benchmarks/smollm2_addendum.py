"""The SmolLM2 study's addendum of 2026-12-07 (docs/BENCHMARKS.md): its report, from the rescored runs.

    python benchmarks/smollm2_study.py --stage addendum      # OUT/addendum.json and the tables

It reads every `addendum-lr<rate>/` folder under OUT (benchmarks/results/smollm2_heldout): each run's
`rescore.json` (its final adapter on every clean reference) and `result.json` (its own 120-reference
curve). A comparison is SIBO − plain held-out loss at the last step (AdapterH: its change from step 0),
over the seeds both arms finished, with the addendum's two-level bootstrap (seeds and references
resampled together), its p-value, Holm's correction over the comparisons read on all references (the
primary, the grid's two, the other arms' four), and the verdict by the rule fixed before the runs. Beside
them: the answer-phrase loss, the secondary measures as the first report computed them (accuracy with
McNemar pooled over seeds, similarity by layer), the tuning criterion, and the checks (pairs on one data
order, the training code, rescoring against each run's own losses, reruns of committed runs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import smollm2_report
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
PRIMARY_RATE = "3e-3"  # the pre-registered primary's LoRA learning rate, as its folder names it
RESCORE_TOLERANCE = 1e-4  # a rescored run's losses on its own references must equal its last step's


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
    seeds = paired_seeds(runs, sibo, plain, rescored=True)
    if not seeds:
        return {}
    a, b = (np.array([scores(runs[f"{arm}_seed{s}"], keys, measure) for s in seeds]) for arm in (sibo, plain))
    return {"sibo": sibo, "plain": plain, "seeds": seeds, **bootstrap_comparison(a, b)}


def paired_seeds(runs: dict[str, dict], sibo: str, plain: str, rescored: bool = False) -> list[int]:
    """The seeds both arms finished (and rescored), refused in one line where a pair's two runs saw
    different training batches: such a pair is not a paired comparison."""
    seeds = sorted(r["run"]["seed"] for r in runs.values() if r["run"]["arm"] == plain)
    seeds = [s for s in seeds if f"{sibo}_seed{s}" in runs]
    if rescored:
        seeds = [s for s in seeds if all("rescore" in runs[f"{arm}_seed{s}"] for arm in (sibo, plain))]
    differs = [
        s for s in seeds if runs[f"{sibo}_seed{s}"]["data_order"] != runs[f"{plain}_seed{s}"]["data_order"]
    ]
    if differs:
        raise SystemExit(f"{sibo} and {plain} saw different training batches for seeds {differs}: not paired")
    return seeds


def bootstrap_comparison(a: np.ndarray, b: np.ndarray) -> dict:
    """The addendum's statistics of paired (seeds, references) scores: the difference, its two-level interval
    and p-value, and about how many seeds would decide it. A reference without a score in some run (a NaN:
    no answer phrase, or a prompt past the context) is left out of every run alike."""
    kept = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))
    a, b = a[:, kept], b[:, kept]
    interval = two_level_bootstrap(a, b, RESAMPLES)
    seed_variance, record_variance = variance_components(a, b)
    return {
        "references_scored": int(kept.sum()),
        "per_seed": (a - b).mean(axis=1).tolist(),
        "interval": interval.as_dict(),
        "p": bootstrap_p_value(two_level_draws(a, b, RESAMPLES)),
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
    seeds = paired_seeds(runs, sibo, plain)
    if not seeds:
        return {}

    def change(run: dict) -> list[float]:
        last = str(max(int(step) for step in run["points"]))
        return (
            np.array(run["points"][last]["rationale"]) - np.array(run["points"]["0"]["rationale"])
        ).tolist()

    a, b = (np.array([change(runs[f"{arm}_seed{s}"]) for s in seeds]) for arm in (sibo, plain))
    return {"sibo": sibo, "plain": plain, "seeds": seeds, **bootstrap_comparison(a, b), "exploratory": True}


def as_before(runs: dict[str, dict], sibo: str, plain: str) -> dict:
    """The secondary measures as the first report gave them (smollm2_report.compare): loss at each step on
    the 120 references (answer phrase included), accuracy with exact McNemar pooled over seeds, and token
    similarity by layer; its own verdict (a t-interval rule the addendum replaced) left out."""
    seeds = paired_seeds(runs, sibo, plain)
    if not seeds:
        return {}
    found = smollm2_report.compare(
        sibo, plain, *({s: runs[f"{arm}_seed{s}"] for s in seeds} for arm in (sibo, plain))
    )
    return {key: value for key, value in found.items() if key != "verdict"}


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
    """Every comparison in every folder, Holm over those read at the last step on all references (the
    primary, the grid's two, the other arms' four: AdapterH's is its change from step 0), verdicts by the
    addendum's rule, the secondary measures as before, the tuning criterion, and the checks."""
    summary = {"margin": MARGIN, "references": {name: len(keys) for name, keys in sets.items()}, "rates": {}}
    family = []
    for rate, folder in folders.items():
        runs = read_runs(folder)
        plain_seed0 = runs.get("lora_seed0", {}).get("rescore")
        row = {
            "reproduced": reproduced(runs, committed) if rate == PRIMARY_RATE else {},
            "tuning_loss": float(np.mean(plain_seed0["tuning"]["rationale"])) if plain_seed0 else None,
            "trained_by": sorted({run["code_version"] for run in runs.values()}),
            "rescore_differences": {
                name: run["rescore"]["max_difference_from_run"]
                for name, run in runs.items()
                if "rescore" in run
            },
            "comparisons": [],
            "as_before": [],
        }
        for sibo, arm in ARMS.items():
            if arm.plain is None:
                continue
            if before := as_before(runs, sibo, arm.plain):
                row["as_before"].append(before)
            if arm.adapter == "bottleneck":
                if found := change_from_start(runs, sibo, arm.plain):
                    found = {**found, "measure": "change from step 0", "references": "first 120"}
                    row["comparisons"].append(found)
                    family.append(found)
                continue
            for name, keys in sets.items():
                if found := compare(runs, sibo, arm.plain, keys):
                    primary = (sibo, arm.plain) == PRIMARY and rate == PRIMARY_RATE and name == "all"
                    found = {**found, "measure": "rationale", "references": name, "primary": primary}
                    row["comparisons"].append(found)
                    if name == "all":
                        family.append(found)
            if found := compare(runs, sibo, arm.plain, sets["all"], "answer"):
                row["comparisons"].append({**found, "measure": "answer phrase", "references": "all"})
        summary["rates"][rate] = row
    for found, adjusted in zip(family, holm([c["p"] for c in family]), strict=True):
        found["p_holm"] = adjusted
    for row in summary["rates"].values():
        for found in row["comparisons"]:
            found["verdict"] = verdict(Interval(**found["interval"]), found["seeds_to_decide"])
    summary["tuning"] = tuning_choice(summary["rates"])
    return summary


def tuning_choice(rates: dict[str, dict]) -> dict:
    """Which LoRA rate the tuning criterion prefers (the lowest tuning-slice loss of its seed-0 plain run),
    and whether 3e-3's equals the committed tuning run's, 0.4011, as measuring the same training must."""
    losses = {rate: row["tuning_loss"] for rate, row in rates.items() if row["tuning_loss"] is not None}
    measured = losses.get(PRIMARY_RATE)
    return {
        "loss_by_lr": losses,
        "prefers": min(losses, key=losses.get) if losses else None,
        "committed_at_3e-3": TUNING_AT_3E3,
        "agrees_with_committed": None if measured is None else round(measured, 4) == TUNING_AT_3E3,
    }


def tables(summary: dict) -> str:
    """The report as markdown: one row per comparison, the secondary accuracy, then the checks."""
    lines = [
        "| lr | SIBO − plain | measure | references | seeds | difference [95 % seeds × references] | p "
        "| p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rate, row in summary["rates"].items():
        for c in row["comparisons"]:
            i = c["interval"]
            holm_p = f"{c['p_holm']:.3g}" if "p_holm" in c else "-"
            label = " (primary)" if c.get("primary") else " (exploratory)" if c.get("exploratory") else ""
            lines.append(
                f"| {rate} | {c['sibo']} − {c['plain']}{label} | {c['measure']} | {c['references']} | "
                f"{len(c['seeds'])} | {i['difference']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] | "
                f"{c['p']:.3g} | {holm_p} | {c['verdict']} |"
            )
    lines += ["", "| lr | SIBO − plain | seeds | accuracy, SIBO − plain per seed | gained / lost | McNemar pooled p |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for rate, row in summary["rates"].items():
        for before in row["as_before"]:
            if accuracy := before.get("accuracy"):
                per_seed = ", ".join(f"{d:+.3f}" for d in accuracy["per_seed"])
                lines.append(
                    f"| {rate} | {before['sibo']} − {before['plain']} | {len(before['seeds'])} | {per_seed} | "
                    f"{sum(accuracy['gained'])} / {sum(accuracy['lost'])} | {accuracy['mcnemar_p_pooled']:.3g} |"
                )
    lines.append("")
    for rate, row in summary["rates"].items():
        tuning = "-" if row["tuning_loss"] is None else f"{row['tuning_loss']:.4f}"
        worst = max(row["reproduced"].values(), default=None)
        rescored = max(row["rescore_differences"].values(), default=None)
        lines.append(
            f"lr {rate}: tuning-slice loss of lora seed 0 {tuning}; trained by {', '.join(row['trained_by'])}; "
            f"rescoring's largest difference from a run's own losses "
            f"{'-' if rescored is None else f'{rescored:.2g}'} (tolerance {RESCORE_TOLERANCE:g}); reruns of "
            f"committed runs: {len(row['reproduced'])}, largest difference {'-' if worst is None else f'{worst:.2g}'}"
        )
    tuning = summary["tuning"]
    lines.append(
        f"the tuning criterion prefers lr {tuning['prefers']}; 3e-3's measured value agrees with the committed "
        f"{tuning['committed_at_3e-3']}: {tuning['agrees_with_committed']}"
    )
    return "\n".join(lines)
