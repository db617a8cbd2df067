"""Score a model on the paper's benchmarks: batched decoding, resumable output, data parallel.

    sibo evaluate --base_model B --weights_path W --dataset math --output_dir O

Upstream scores one question at a time with 4 beams and use_cache=False, so every new token
recomputes the whole prefix. Here prompts are sorted by length, batched with left padding and
decoded with the KV cache on; the decoding itself is upstream's (4 beams, no sampling, its
max_new_tokens per family). Every scored example is appended to O/<dataset>.jsonl at once, so a
killed run resumes where it stopped; at the end the file is rewritten in index order (predictions
re-read from the stored responses with the current --extraction) and O/summary.json updated
(those files: sibo.eval.results).
With the chat template (an adapter trained on chat), the question (instruction + input) is the user
turn and the response the assistant's.

Data parallel (`torchrun --nproc_per_node N -m sibo evaluate …`, or `accelerate launch`): each
rank scores every N-th pending example into O/<dataset>.rank<r>.jsonl; rank 0 merges them once, and
every rank returns rank 0's results (read back from O/summary.json).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sibo.decode.settings import check_fits_context
from sibo.errors import InputError
from sibo.eval import contamination
from sibo.eval.config import EvalConfig
from sibo.eval.results import (
    DatasetResult,
    appending,
    as_line,
    consolidate,
    main_process_results,
    read_records,
    score,
    write_summary,
)
from sibo.eval.tasks import Example, Task, load_examples
from sibo.files import EVAL_RUN_FILE, SUMMARY_FILE, read_json, write_json
from sibo.output_dir import claim_output_dir, files_named, hold_output_dir, is_named
from sibo.progress import bar
from sibo.prompts import CHAT, PromptTemplate

if TYPE_CHECKING:
    import torch

    from sibo.checkpoint.config import ModelConfig

logger = logging.getLogger(__name__)

VERB = "evaluate"
# what produced the responses in this output directory, checked on resume
RUN_FILE = EVAL_RUN_FILE


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel run; one process by default."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def accelerate_shard() -> tuple[Shard, torch.device]:
    """(Shard, device) from accelerate's view of the launch (torchrun / accelerate launch / plain)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes, state.wait_for_everyone), state.device


def load_benchmarks(config: EvalConfig) -> list[tuple[Task, list[Example]]]:
    """Every requested benchmark, read and validated before a model is loaded; with train_data, each
    example marked `seen` when the training file holds its question (with exclude_seen, a set the training
    file holds whole is refused now)."""
    benchmarks = []
    for task in config.tasks:
        examples = load_examples(task, config.data_dir)
        benchmarks.append((task, examples[: config.limit] if config.limit else examples))
    if not config.train_data:
        return benchmarks
    marked = contamination.mark_seen(benchmarks, config.train_data, config.train_data_columns)
    if config.exclude_seen:
        contamination.unseen_only(marked)  # only its check: evaluate drops the seen ones itself
    return marked


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    config: EvalConfig,
    benchmarks: list[tuple[Task, list[Example]]] | None = None,
    run_info: dict | None = None,
    shard: Shard | None = None,
    replace_changed: bool = False,
) -> dict[str, DatasetResult]:
    """Score every benchmark (resuming an earlier run of these settings in config.output_dir); {dataset:
    result}. `replace_changed`: the folder is a study's own, whose run of other settings is replaced."""
    shard = shard or Shard()
    benchmarks = benchmarks if benchmarks is not None else load_benchmarks(config)
    run = run_record(config, run_info)
    if shard.is_main:
        claim_eval_dir(config, run, dry_run=True, replace_changed=replace_changed)
    overlap = contamination.overlap_report(benchmarks, config.exclude_seen) if config.train_data else {}
    if config.exclude_seen:
        benchmarks = contamination.unseen_only(benchmarks)
    lengths = {}  # prompt tokens per example, per benchmark: checked against the context before any output
    for task, examples in benchmarks:
        prompts = {e.index: prompt_of(e, tokenizer, config.prompt_template) for e in examples}
        lengths[task.name] = prompt_lengths(tokenizer, prompts, config.prompt_template)
        if lengths[task.name]:
            index, longest = max(lengths[task.name].items(), key=lambda item: item[1])
            budget = config.decoding.tokens_or(task.max_new_tokens)
            check_fits_context(model, longest, budget, f"{task.name} example {index}: its prompt")
    with hold_output_dir(config.output_dir) if shard.is_main else nullcontext():
        if shard.is_main:
            claim_eval_dir(config, run, replace_changed=replace_changed)
        shard.barrier()
        results = {}
        for task, examples in benchmarks:
            results[task.name] = evaluate_dataset(
                model, tokenizer, task, examples, config, shard, lengths[task.name]
            )
        if shard.is_main:
            write_summary(config, results, run, overlap)
        shard.barrier()
    return results if shard.is_main else main_process_results(config, results)


def evaluate_model(
    source: ModelConfig, config: EvalConfig, labels: dict | None = None, merge: bool = True
) -> tuple[dict[str, DatasetResult], bool]:
    """`sibo evaluate`: load the model `source` names (its own template), score it on every benchmark of
    `config` on this process's shard; (results, whether this is the main process). `labels`: upstream's
    --model / --adapter, recorded only. Bad data or a folder not ours stop before any model loads."""
    from sibo.checkpoint.load import load_for_decoding

    benchmarks = load_benchmarks(config)
    run_info = {
        "base_model": source.base_model,
        "weights_path": source.weights_path,
        "embedding_lambda": source.lam,
        "quantization": source.quantization,
        "dtype": source.dtype,
        **(labels or {"model": None, "adapter": None}),
    }
    shard, device = accelerate_shard()
    if shard.is_main:
        claim_eval_dir(config, run_record(config, run_info), dry_run=True)
    device_map = {"": str(device)} if device.type != "cpu" else None
    model, tokenizer, template = load_for_decoding(source, merge, device_map)
    config = replace(config, template=template.name)
    return evaluate(model, tokenizer, config, benchmarks, run_info, shard), shard.is_main


def describe_settings(config: EvalConfig, lam: float | None) -> str:
    """How a score was made, in a few words (a model card's row): what changes the number."""
    words = [
        f"{config.extraction} extraction",
        f"{config.decoding.num_beams} beams",
        f"{config.template} template",
    ]
    if config.limit:
        words.append(f"first {config.limit} examples")
    if config.exclude_seen:
        words.append("questions unseen in training only")
    if lam is not None:
        words.append(f"λ {lam} (not the adapter's own)")
    return ", ".join(words)


def run_record(config: EvalConfig, run_info: dict | None) -> dict:
    """What produces the responses (model, decoding): run.json; resuming needs the same."""
    return {
        **(run_info or {}),
        "num_beams": config.decoding.num_beams,
        "max_new_tokens": config.decoding.max_new_tokens,
        # only when chat: result folders written before templates existed (Alpaca's) still resume
        **({"template": CHAT} if config.template == CHAT else {}),
        # scoring fewer questions is another run; counting them is not
        **({"exclude_seen": True} if config.exclude_seen else {}),
    }


def claim_eval_dir(
    config: EvalConfig, run: dict, dry_run: bool = False, replace_changed: bool = False
) -> None:
    """output_dir must be empty, this run's earlier results (resumed), or handed over with --overwrite;
    refused in one line otherwise (see sibo.output_dir.claim_output_dir). `dry_run` writes nothing."""
    reads = [("--data_dir", config.data_dir)] + [
        (f"--{key}", run[key]) for key in ("weights_path", "base_model") if run.get(key)
    ]
    if config.train_data is not None:
        reads.append(("--train_data", config.train_data))
    claim_output_dir(config.output_dir, VERB, run, config.overwrite, dry_run=dry_run, legacy=_legacy_results,
                     reads=reads, replace_changed=replace_changed, writes=RESULT_FILES)  # fmt: skip
    if not dry_run:
        write_json(config.output_dir / RUN_FILE, run)


RESULT_FILES = (RUN_FILE, SUMMARY_FILE, "*.jsonl", "*.jsonl.tmp")  # what evaluate writes in its folder


def _legacy_results(directory: Path) -> dict | None:
    """An evaluate folder written before sibo.output_dir.RUN_MARKER: run.json, summary.json and results only."""
    own = all(
        is_named(entry.name, RESULT_FILES) for entry in directory.iterdir() if not entry.name.startswith(".")
    )
    if not own or not (directory / RUN_FILE).exists():
        return None
    try:
        run = read_json(directory / RUN_FILE)
    except InputError:
        run = None  # a run.json torn by a full disk: its settings are unknown
    wrote = files_named(directory, RESULT_FILES)  # a hidden entry (.git) is the user's
    return {"verb": VERB, "settings": run if isinstance(run, dict) else None, "wrote": wrote}


def evaluate_dataset(
    model: torch.nn.Module,
    tokenizer,
    task: Task,
    examples: list[Example],
    config: EvalConfig,
    shard: Shard,
    lengths: dict[int, int],
) -> DatasetResult:
    """Score one benchmark's pending examples, appending each batch to <output_dir>/<name>.jsonl; the
    result on the main process (the others return 0/0: `evaluate` gives them the main one's)."""
    path = config.output_dir / f"{task.name}.jsonl"
    chat = config.prompt_template.name == CHAT
    if shard.is_main:
        consolidate(path, task, examples, config.extraction, chat)  # repairs a torn tail, merges stale shards
    shard.barrier()
    done = read_records(path)
    pending = [example for example in examples if example.index not in done]
    prompts = {example.index: prompt_of(example, tokenizer, config.prompt_template) for example in pending}
    # Longest first, so similar lengths share a batch (little padding) and an OOM shows up at once;
    # striding the sorted list gives every rank the same mix of lengths.
    mine = sorted(pending, key=lambda example: -lengths[example.index])[shard.rank :: shard.world]
    target = path if shard.world == 1 else _shard_file(path, shard.rank)
    if shard.world > 1:
        _check_ranks_share(path, task, shard)
    correct = sum(record["correct"] for record in done.values())
    scored = len(done)
    progress = bar(total=len(examples), initial=scored, desc=task.name, unit="ex", disable=not shard.is_main)
    path.parent.mkdir(parents=True, exist_ok=True)
    with appending(target) as out:
        for batch, responses in _decode_batches(model, tokenizer, task, mine, prompts, config, lengths):
            for example, response in zip(batch, responses, strict=True):
                record = score(task, example, response, config.extraction, chat)
                out.write(as_line(record))
                correct += record["correct"]
            out.flush()
            scored += len(batch)
            progress.set_postfix(acc=f"{correct / scored:.3f}", refresh=False)  # shown by the update
            # other ranks keep pace: count their batches too, without running past the total
            progress.update(min(len(batch) * shard.world, progress.total - progress.n))
    progress.close()
    shard.barrier()
    if not shard.is_main:
        return DatasetResult(0, 0)
    records = consolidate(path, task, examples, config.extraction, chat)
    if len(records) < len(examples):  # another rank's answers are not in this folder: no accuracy of a part
        raise InputError(
            f"{task.name}: {len(examples) - len(records)} of {len(examples)} examples have no answer in "
            f"{path.parent}: {_ONE_FOLDER}"
        )
    result = DatasetResult(n=len(records), correct=sum(record["correct"] for record in records.values()))
    logger.info("%s: %d/%d correct (%.4f)", task.name, result.correct, result.n, result.accuracy)
    return result


_ONE_FOLDER = (
    "every rank of a data-parallel run must write to the same --output_dir (one folder they all reach)"
)


def _shard_file(path: Path, rank: int) -> Path:
    """Where rank `rank` appends its answers to the benchmark whose results are `path` (merged by rank 0)."""
    return path.with_name(f"{path.stem}.rank{rank}.jsonl")


def _check_ranks_share(path: Path, task: Task, shard: Shard) -> None:
    """Refuse, before anything is decoded, a data-parallel run whose ranks do not all write to rank 0's folder
    (a node-local --output_dir): each rank makes its shard file, and rank 0 must see them all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _shard_file(path, shard.rank).touch()
    shard.barrier()
    missing = [str(rank) for rank in range(shard.world) if not _shard_file(path, rank).is_file()]
    if shard.is_main and missing:
        raise InputError(
            f"{task.name}: rank {', '.join(missing)} of {shard.world} does not write to {path.parent}: {_ONE_FOLDER}"
        )


def _decode_batches(
    model: torch.nn.Module,
    tokenizer,
    task: Task,
    examples: list[Example],
    prompts: dict[int, str],
    config: EvalConfig,
    lengths: dict[int, int],
) -> Iterator[tuple[list[Example], list[str]]]:
    """(batch, responses) for `examples` in order. With --batch_size auto, a batch that runs out of GPU
    memory is retried halved, and the smaller size kept."""
    import torch

    from sibo.decode.batch import auto_batch_size, generate_batch

    # this task's budget unless --max_new_tokens was given
    decoding = replace(config.decoding, max_new_tokens=config.decoding.tokens_or(task.max_new_tokens))
    auto = decoding.batch_size == "auto"
    size = (
        auto_batch_size(model, max(lengths.values(), default=1), decoding.max_new_tokens, decoding.num_beams)
        if auto
        else decoding.batch_size
    )
    start = 0
    while start < len(examples):
        batch = examples[start : start + size]
        try:
            responses = generate_batch(
                model,
                tokenizer,
                [prompts[example.index] for example in batch],
                settings=decoding,
                template=config.prompt_template,
            )
        except torch.cuda.OutOfMemoryError:
            if not auto or size == 1:
                raise
            size //= 2  # the estimate was too hopeful: retry this batch halved, and keep the new size
            torch.cuda.empty_cache()
            logger.warning("out of GPU memory: batch size now %d", size)
            continue
        start += len(batch)
        yield batch, responses


def prompt_of(example: Example, tokenizer, template: PromptTemplate = PromptTemplate()) -> str:
    """The benchmark question (instruction + input) as `template` prompts it: with chat, the user turn."""
    return template.prompt(tokenizer, example.instruction, example.input or None)


def prompt_lengths(
    tokenizer, prompts: dict[int, str], template: PromptTemplate = PromptTemplate()
) -> dict[int, int]:
    """Tokens per prompt, counted as decoding tokenizes them (a chat prompt holds its own BOS)."""
    if not prompts:
        return {}
    ids = tokenizer(list(prompts.values()), add_special_tokens=template.add_special_tokens)["input_ids"]
    return {index: len(tokens) for index, tokens in zip(prompts, ids, strict=True)}
