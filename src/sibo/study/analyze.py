"""Over-smoothing by depth: how alike the tokens of one sequence become, layer after layer.

    sibo analyze --base_model B --weights_path W1 W2 --data test.json --n 64

The paper's measure (its central figure): for each layer's hidden states of a sequence, the mean
cosine similarity over all pairs of distinct real tokens, averaged over n records. Deep models
drive it towards 1 (every token looks the same); SIBO's initial residual should hold it lower.
Layer 0 is the input of block 0 (h0); layer i is the output of block i, read from the blocks themselves:
transformers' `hidden_states` ends with the final norm's output instead of the last block's, and that
norm's per-channel gain changes cosines.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sibo.checkpoint.config import BaseModelSource, CpuThreads, ModelDtype, check_threads, resolve_base_model
from sibo.errors import InputError
from sibo.files import ANALYZE_PLOT_FILE, ANALYZE_RESULTS_FILE, write_atomically
from sibo.output_dir import claim_output_dir, files_named, hold_output_dir
from sibo.progress import bar
from sibo.prompts import build_prompt
from sibo.study.plots import pyplot, save_figure

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RESULTS_FILE = ANALYZE_RESULTS_FILE
PLOT_FILE = ANALYZE_PLOT_FILE
BASE_LABEL = "base"


@dataclass
class _AnalyzedRecords:
    data: Path = field(metadata={"help": "records in the LLM-Adapters layout (.json list or .jsonl)"})


@dataclass
class _AnalyzeSettings:
    weights_paths: list[str] = field(
        default_factory=list, metadata={"help": "adapters to compare with the base"}
    )
    output_dir: Path | None = field(
        default=None,
        metadata={"help": "where analyze.json and the PNG go (default: the first adapter's folder/analyze)"},
    )
    n: int = field(default=64, metadata={"help": "how many records (the first n) to average over"})
    batch_size: int = field(default=8, metadata={"help": "records per forward pass"})
    max_length: int = field(default=512, metadata={"help": "truncate each record to this many tokens"})


@dataclass
class _AnalyzeOverwrite:
    overwrite: bool = field(
        default=False,
        metadata={"help": "hand output_dir over to this run: another analysis there is deleted first"},
    )


# AnalyzeConfig's fields come in parts around the shared base_model, dtype and threads, so that the analysis's
# run marker keeps its keys in their order: a dataclass puts inherited fields first.
@dataclass
class AnalyzeConfig(
    CpuThreads, _AnalyzeOverwrite, ModelDtype, _AnalyzeSettings, BaseModelSource, _AnalyzedRecords
):
    """Which models to compare on which records, and where the results go: data, base_model
    (BaseModelSource: the first adapter's recorded base by default), the settings, dtype, threads."""

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.n < 1 or self.batch_size < 1 or self.max_length < 2:
            raise InputError("--n and --batch_size must be at least 1, --max_length at least 2")
        if not self.data.is_file():
            raise InputError(f"data file {self.data} does not exist")
        from sibo.checkpoint.weights import ADAPTER_WEIGHTS, check_weights_dir

        for path in self.weights_paths:
            if not Path(path).is_dir():
                raise InputError(f"adapter directory {path} does not exist")
            check_weights_dir(path, ADAPTER_WEIGHTS)  # now, not after the models before it were measured
        self.base_model = resolve_base_model(self.base_model, next(iter(self.weights_paths), None))
        self.threads = check_threads(self.threads)
        if self.output_dir is None and not self.weights_paths:
            raise InputError(
                "--output_dir is needed for the base model alone (with adapters: the first's/analyze)"
            )
        # beside what was measured, not in whatever folder the command ran from
        self.output_dir = Path(self.output_dir or Path(self.weights_paths[0]) / "analyze")


def mean_pairwise_cosine(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the mean cos(h_i, h_j) over pairs i ≠ j of real tokens; NaN with fewer than 2.

    hidden (B, T, D), mask (B, T) with 1 for real tokens. Uses Σ_{i≠j} ĥ_i·ĥ_j = ‖Σ ĥ_i‖² - Σ ‖ĥ_i‖²,
    so it costs O(T·D), not O(T²·D).
    """
    import torch

    real = mask.to(torch.float64).unsqueeze(-1)  # (B, T, 1)
    unit = torch.nn.functional.normalize(hidden.to(torch.float64), dim=-1) * real  # (B, T, D), pads zeroed
    total = unit.sum(dim=1).pow(2).sum(dim=-1)  # (B,) ‖Σ ĥ_i‖²
    self_pairs = unit.pow(2).sum(dim=(1, 2))  # (B,) Σ ‖ĥ_i‖²
    count = real.sum(dim=(1, 2))  # (B,)
    pairs = count * (count - 1)
    return torch.where(pairs > 0, (total - self_pairs) / pairs.clamp(min=1), torch.nan)


def layer_similarity(
    model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512
) -> list[float]:
    """For each hidden state (embeddings, then every block), the similarity averaged over texts."""
    import torch

    from sibo.decode.finite import finite_logits

    device = next(model.parameters()).device
    sums: torch.Tensor | None = None
    counted = 0
    with torch.no_grad(), finite_logits(model):  # NaN activations would average into NaN similarities
        for start in bar(range(0, len(texts), batch_size), desc="similarity", leave=False):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            hidden_states = block_states(model, batch)
            # (L+1, B)
            per_layer = torch.stack([mean_pairwise_cosine(h, batch["attention_mask"]) for h in hidden_states])
            usable = ~per_layer[0].isnan()  # records with at least two tokens
            batch_sums = per_layer[:, usable].sum(dim=1).cpu()
            sums = batch_sums if sums is None else sums + batch_sums
            counted += int(usable.sum())
    if not counted:
        raise InputError("no record has two or more tokens to compare")
    return (sums / counted).tolist()


def block_states(model, batch: dict) -> list[torch.Tensor]:
    """[h0, block 1's output, …, block L's output] of one forward, each (B, T, H)."""
    from sibo.core.booster import find_transformer_blocks

    _, blocks = find_transformer_blocks(model)
    states: list = [None] * (len(blocks) + 1)

    def keep_input(module, args, kwargs):
        states[0] = args[0] if args else kwargs["hidden_states"]

    def keeper(at: int):
        def keep_output(module, args, output):
            states[at] = output[0] if isinstance(output, tuple) else output

        return keep_output

    handles = [blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [block.register_forward_hook(keeper(at)) for at, block in enumerate(blocks, start=1)]
    try:
        model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return states


def read_texts(path: Path, n: int, tokenizer=None) -> list[str]:
    """The first n records of a data file as full texts, as finetune writes them: an instruction record as
    prompt (shared template) + output, a chat record (ShareGPT or messages) through `tokenizer`'s chat
    template (None: the records are only read and checked)."""
    from sibo.chat import Conversation, render
    from sibo.data import read_records_file

    records = read_records_file(path)
    if len(records) < n:
        logger.info("%s holds %d records, fewer than n=%d: using them all", path, len(records), n)
    if tokenizer is None:
        return []
    return [
        render(tokenizer, record.messages, f"{path}: record {index}", spans=False)[0]
        if isinstance(record, Conversation)
        else build_prompt(record.instruction, record.input or None) + record.output
        for index, record in enumerate(records[:n])
    ]


def model_labels(weights_paths: list[str]) -> list[str]:
    """'base', then each adapter's directory name (its full path when names repeat)."""
    names = [Path(path).name or str(path) for path in weights_paths]
    unique = len(set(names)) == len(names) and BASE_LABEL not in names
    return [BASE_LABEL] + (names if unique else [str(path) for path in weights_paths])


def analyze(config: AnalyzeConfig) -> dict:
    """Measure every model, write analyze.json and analyze.png; returns what analyze.json holds."""
    from sibo.checkpoint.load import load_model

    pyplot()  # fail before the long part, not after it, when matplotlib is missing
    claim_analyze_dir(config, dry_run=True)  # and when output_dir is not ours to write
    read_texts(config.data, config.n)  # bad records stop us before any model loads
    labels = model_labels(config.weights_paths)
    similarity, texts = {}, []
    for label, weights_path in zip(labels, [None, *config.weights_paths], strict=True):
        model, tokenizer = load_model(
            config.base_model, weights_path, dtype=config.dtype, threads=config.threads
        )
        texts = texts or read_texts(config.data, config.n, tokenizer)  # the base's tokenizer, for every model
        logger.info("measuring %s on %d records", label, len(texts))
        similarity[label] = layer_similarity(model, tokenizer, texts, config.batch_size, config.max_length)
        del model
    results = {
        "base_model": config.base_model,
        "data": str(config.data),
        "n": len(texts),
        "layers": list(range(len(next(iter(similarity.values()))))),
        "similarity": similarity,
        "adapters": dict(zip(labels[1:], config.weights_paths, strict=True)),
    }
    with hold_output_dir(config.output_dir):
        claim_analyze_dir(config)
        write_atomically(config.output_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        plot_similarity(
            similarity, config.output_dir / PLOT_FILE, title=f"{Path(config.base_model).name}, n={len(texts)}"
        )
    return results


def claim_analyze_dir(config: AnalyzeConfig, dry_run: bool = False) -> None:
    """output_dir must be empty, an analysis with these settings (redone), or handed over with --overwrite."""
    settings = {key: value for key, value in asdict(config).items() if key not in ("output_dir", "overwrite")}
    claim_output_dir(
        config.output_dir, "analyze", json.loads(json.dumps(settings, default=str)), config.overwrite,
        dry_run=dry_run, legacy=_legacy_analysis, writes=(RESULTS_FILE, PLOT_FILE),
        reads=[("--data", config.data), ("--base_model", config.base_model)]
        + [("--weights_path", path) for path in config.weights_paths],
    )  # fmt: skip


def _legacy_analysis(directory: Path) -> dict | None:
    """A folder an analysis wrote before sibo.output_dir.RUN_MARKER: analyze.json (and analyze.png), beside
    nothing but hidden entries (.git), which stay the user's."""
    names = {entry.name for entry in directory.iterdir() if not entry.name.startswith(".")}
    if RESULTS_FILE not in names or not names <= {RESULTS_FILE, PLOT_FILE}:
        return None
    return {"verb": "analyze", "settings": None, "wrote": files_named(directory, (RESULTS_FILE, PLOT_FILE))}


def plot_similarity(similarity: dict[str, list[float]], file: Path, title: str = "") -> None:
    """A line per model: layer on x, mean pairwise token cosine similarity on y."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, values in similarity.items():
        axes.plot(range(len(values)), values, marker="o", label=label)
    axes.set_xlabel("layer (0 = embeddings)")
    axes.set_ylabel("mean pairwise token cosine similarity")
    axes.set_title(title or "token similarity by depth")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, file)


def format_table(results: dict) -> str:
    """The similarity table as text: one row per layer, one column per model."""
    labels = list(results["similarity"])
    width = max(10, *(len(label) for label in labels))
    lines = ["layer  " + "  ".join(f"{label:>{width}}" for label in labels)]
    for layer in results["layers"]:
        cells = "  ".join(f"{results['similarity'][label][layer]:>{width}.4f}" for label in labels)
        lines.append(f"{layer:>5}  {cells}")
    return "\n".join(lines)
