"""The held-out side of `sibo sweep --heldout N`: the split, and each run's held-out loss while it trains.

    heldout = prepare_heldout(config.finetune, config.heldout, config.heldout_seed)   # before anything is written
    log = HeldOutLog(run_dir, heldout)                      # run_dir/heldout_loss.json
    callbacks = [log.callback(eval_step)]                   # scores at step 0, every eval_step, the end
    step, points = log.final(finetune_config)               # the saved adapter's step, {step: losses}

A run's losses carry a digest of what decides them (the training records and the held-out ones as
tokenized, not their indices alone): an adapter or checkpoints with no losses of this digest (trained on
other data, the same data in another order, or by a sweep without --heldout) are refused rather than
scored, or resumed, as if those records were held out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sibo.data import Record
from sibo.errors import InputError
from sibo.files import TRAIN_METRICS_FILE, read_json, write_atomically
from sibo.study.heldout import Encoded, PeriodicHeldOutLoss, Reference, encode_references, held_out_losses
from sibo.study.split import (
    HELDOUT_FILE,
    SPLIT_FILE,
    TRAIN_FILE,
    HeldOutSplit,
    heldout_split,
    instruction_records,
    split_files,
)
from sibo.train.config import FinetuneConfig
from sibo.train.resume import CHECKPOINT_PREFIX

logger = logging.getLogger(__name__)

LOSS_FILE = "heldout_loss.json"
MEASURE = "mean negative log-likelihood per response token (output + EOS, given the prompt)"


@dataclass
class HeldOut:
    """The split of the training data and the held-out records, encoded for scoring."""

    records: list[Record]
    split: HeldOutSplit
    encoded: list[Encoded]
    digest: str  # names the split's content: runs trained or scored on other records are not mixed in
    batch_size: int = 8
    # this split as a log written before 2026-12-08 names it (`accept_earlier`)
    earlier_digest: str | None = None


def prepare_heldout(finetune: FinetuneConfig, count: int, seed: int) -> HeldOut:
    """Read the training data, split it, and tokenize the held-out records as finetune would (cut at
    cutoff_len); refused for chat records or --template chat (the scorer renders Alpaca's prompt), and
    when no held-out record keeps a response token within cutoff_len (nothing would be scored)."""
    if finetune.template == "chat":
        raise InputError(
            "--heldout scores records with Alpaca's template; --template chat is not supported with it"
        )
    from sibo.checkpoint.load import load_tokenizer

    # several sources are mixed once, with --seed, so that every run trains on one split of one mix
    records = instruction_records(
        finetune.data_path, finetune.data_columns, finetune.data_ratios, finetune.seed
    )
    split = heldout_split(records, count, seed)
    references = [
        Reference(f"record/{k}", records[k].instruction, records[k].output, records[k].input)
        for k in split.heldout
    ]
    encoded = encode_references(
        references, load_tokenizer(finetune.base_model), max_tokens=finetune.cutoff_len
    )
    scored = sum(any(e.rationale[1:]) for e in encoded)  # the positions held_out_losses scores
    if not scored:
        raise InputError(
            f"--heldout {count}: every held-out record's prompt fills --cutoff_len {finetune.cutoff_len}, "
            "leaving no response token to score: raise --cutoff_len"
        )
    if scored < len(encoded):
        logger.warning(
            "%d of %d held-out records have no response token within --cutoff_len %d: they are not scored",
            len(encoded) - scored, len(encoded), finetune.cutoff_len,
        )  # fmt: skip
    logger.info(
        "held out %d records; %d copies of them left out of training; %d train",
        len(split.heldout), len(split.dropped), len(split.train),
    )  # fmt: skip
    return HeldOut(records, split, encoded, split_digest(records, split, encoded))


def split_digest(records: list[Record], split: HeldOutSplit, encoded: list[Encoded]) -> str:
    """What decides a run's held-out losses: the records it trains on and the held-out ones as scored
    (tokenizer, template and cutoff_len included). Indices alone would let the data re-exported in another
    order pass for the same split, pairing old losses with new ones on other records."""
    content = {"train": split_files(records, split)[TRAIN_FILE], "heldout": [asdict(e) for e in encoded]}
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:16]


def accept_earlier(heldout: HeldOut, folder: Path) -> HeldOut:
    """`heldout`, also accepting the losses a sweep wrote before 2026-12-08, whose logs name the split by its
    indices alone, when the records it trained on and held out (its train.json and heldout.json in `folder`,
    written before anything trained) are this split's: the same run, whose losses stay valid."""
    expected = split_files(heldout.records, heldout.split)
    try:
        same = all(read_json(folder / name) == expected[name] for name in (TRAIN_FILE, HELDOUT_FILE))
    except InputError:  # missing or unreadable: nothing to vouch for the earlier runs
        return heldout
    if not same:
        return heldout
    indices = json.dumps(expected[SPLIT_FILE]).encode()
    return replace(heldout, earlier_digest=hashlib.sha256(indices).hexdigest()[:16])


class HeldOutLog:
    """One run's held-out losses by step, in run_dir/heldout_loss.json, rewritten at each point scored."""

    def __init__(self, run_dir: Path, heldout: HeldOut):
        self.file, self.heldout = run_dir / LOSS_FILE, heldout
        self.points: dict[str, list[float]] = {}
        if self.file.is_file():
            found = read_json(self.file)
            if isinstance(found, dict) and found.get("split") in (heldout.digest, heldout.earlier_digest):
                self.points = found.get("points", {})

    def record(self, step: int, losses: dict[str, list[float]]) -> None:
        self.points[str(step)] = [round(value, 6) for value in losses["rationale"]]
        keys = [encoded.key for encoded in self.heldout.encoded]
        value = {"split": self.heldout.digest, "measure": MEASURE, "keys": keys, "points": self.points}
        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.file, json.dumps(value, separators=(",", ":")) + "\n")

    def callback(self, every: int) -> PeriodicHeldOutLoss:
        """Points already here stay: a run that resumes part way is the same run (finetune checks that)."""
        return PeriodicHeldOutLoss(self.heldout.encoded, every, self.record, self.heldout.batch_size)

    def final(self, finetune: FinetuneConfig) -> tuple[int, dict[int, list[float]]]:
        """The saved adapter's step and every step scored, that step included (the saved adapter is scored
        now if it is missing)."""
        step = adapter_step(read_json(Path(finetune.output_dir) / TRAIN_METRICS_FILE))
        if str(step) not in self.points:
            from sibo.checkpoint.load import load_model

            model, _ = load_model(finetune.base_model, finetune.output_dir, threads=finetune.threads)
            self.record(step, held_out_losses(model, self.heldout.encoded, self.heldout.batch_size))
        return step, {int(point): values for point, values in self.points.items()}


def adapter_step(metrics: dict) -> int:
    """The step whose weights finetune saved as the adapter (`metrics`: its train metrics): with validation
    the Trainer reloads the best checkpoint at the end (load_best_model_at_end), else the last step.

    A sweep reports every number of a run for this one adapter, not the last step's model: it is what the
    run leaves and what its accuracy is scored on, and keeping it leaves the recipe (validation, early
    stopping) as finetune runs it. Checkpoint N holds the weights scored at step N: the held-out callback
    runs at the step's end, before the Trainer evaluates and saves.
    """
    best = metrics.get("best_checkpoint")
    return int(Path(best).name.rpartition("-")[2]) if best else int(metrics["global_step"])


def is_finished(finetune: FinetuneConfig) -> bool:
    return (Path(finetune.output_dir) / TRAIN_METRICS_FILE).is_file()


def check_reusable(log: HeldOutLog, finetune: FinetuneConfig) -> None:
    """A finished adapter is reused, and checkpoints resumed, only when this split's losses are beside them:
    otherwise they may have trained on records now held out."""
    trained = is_finished(finetune) or any(Path(finetune.output_dir).glob(f"{CHECKPOINT_PREFIX}-*"))
    if trained and not log.points and not finetune.overwrite:
        raise InputError(
            f"{log.file.parent} holds an adapter or checkpoints trained without this held-out split of this data "
            f"(no {LOSS_FILE} of it): delete the folder, pass --overwrite, or choose another --output_dir"
        )


def mean_loss(losses: list[float]) -> float:
    kept = [value for value in losses if value == value]  # NaN: a record cut before its response
    return statistics.fmean(kept) if kept else float("nan")
