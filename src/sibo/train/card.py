"""The adapter's README.md: a Hub model card that says it is a SIBO adapter, how it was made, and what loads it.

PEFT's own card says `lora` and nothing else; a reader (or the Hub) must learn from this one that the branches
read (1-λ)·x + λ·h0, and that PEFT without sibo refuses the folder rather than run it as plain LoRA.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sibo.core.booster import find_boost
from sibo.errors import InputError, first_line
from sibo.train.config import FinetuneConfig

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"


def _lambda_text(model: torch.nn.Module) -> str:
    adapter = find_boost(model)
    if adapter is None or (adapter.config.lam == 0 and adapter.lambdas is None):
        return "0 (plain PEFT: no SIBO)"
    if adapter.lambdas is None:
        return f"{adapter.config.lam}"
    per_block = torch.sigmoid(adapter.lambdas.logits.detach().float()).tolist()
    return f"learnt, one per block (started at {adapter.config.lam}): " + ", ".join(
        f"{v:.4f}" for v in per_block
    )


def _accuracy_lines(curve: dict[str, list[list[float]]]) -> list[str]:
    """--eval_datasets' curve ({Name: [[step, accuracy], …]}) as a table: a column per benchmark."""
    if not curve:
        return []
    steps = sorted({step for points in curve.values() for step, _ in points})
    at = {name: dict(map(tuple, points)) for name, points in curve.items()}
    rows = ["| step | " + " | ".join(curve) + " |", "|---:|" + "---:|" * len(curve)]
    rows += [f"| {step} | " + " | ".join(f"{at[name].get(step, float('nan')):.4f}" for name in curve) + " |"
             for step in steps]  # fmt: skip
    return ["", "## Accuracy during training (sibo evaluate's scoring, at each evaluation)", "", *rows]


def adapter_card(
    model: torch.nn.Module, config: FinetuneConfig, template: str, records: int, metrics: dict
) -> ModelCard:
    """The card of a finished `sibo finetune` run; `metrics` as the recipe's save() collects them."""
    adapter = find_boost(model)
    boosted = len(adapter.layers) if adapter is not None else 0
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    targets = targets if isinstance(targets, str) else ",".join(sorted(targets or ()))
    method = config.adapter_name + (f", rank {config.lora_r}" if config.adapter_name != "bottleneck" else "")
    train, evaluation = metrics.get("train", {}), metrics.get("eval", {})
    peft_type = "BOTTLENECK" if config.adapter_name == "bottleneck" else "SIBO_LORA"
    data = ModelCardData(
        library_name="peft",
        tags=["sibo", "peft", "lora"],
        base_model=config.base_model,
        pipeline_tag="text-generation",
    )
    lines = [
        "# A SIBO adapter",
        "",
        "SIBO (Wen, Zhang, Fang, ACL 2024, arXiv 2402.11896): every boosted adapter branch reads (1-λ)·x + λ·h0,",
        "h0 being the token representation entering the first transformer block; the base weights read x.",
        "",
        f"- λ: {_lambda_text(model)}",
        f"- SIBO targets: {config.sibo.targets}; boosted modules: {boosted}",
        f"- method: {method}; adapted modules: {targets}",
        f"- base model: {config.base_model}",
        f"- data: {config.data_path}, {records} training records; template: {template}",
        f"- steps: {train.get('global_step')}; final training loss: {train.get('train_loss')}; "
        f"validation loss: {evaluation.get('eval_loss')}",
        "",
        "## Loading it",
        "",
        "```bash",
        f"sibo generate --base_model {config.base_model} --weights_path <this folder> --prompt '…'",
        f"sibo evaluate --base_model {config.base_model} --weights_path <this folder> --dataset math",
        "```",
        "",
        "```python",
        f"import sibo  # before peft loads it: teaches PEFT the {peft_type} type",
        "from peft import AutoPeftModelForCausalLM",
        "model = AutoPeftModelForCausalLM.from_pretrained('<this folder>')  # exact, as sibo.load_sibo_model",
        "```",
        "",
        f"PEFT without sibo refuses this folder (its adapter_config.json says `{peft_type}`): run as plain LoRA it",
        "would drop the λ·B·A·(h0 - x) term every boosted branch was trained with.",
    ]
    lines += _accuracy_lines(train.get("accuracy") or {})
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_adapter_card(directory: Path, card: ModelCard) -> None:
    """Replace PEFT's blank card beside the adapter."""
    card.save(Path(directory) / CARD_FILE)


# ---------------------------------------------------------------- sibo evaluate's results on the card

EVAL_SOURCE = "sibo evaluate"  # the EvalResult.task_name of the rows `sibo evaluate` adds
_RESULTS_BEGIN, _RESULTS_END = "<!-- sibo evaluate: begin -->", "<!-- sibo evaluate: end -->"


def add_evaluation(directory: Path, scores: dict[str, tuple[int, int]], settings: str) -> Path | None:
    """Add `sibo evaluate`'s accuracy per dataset ({name: (correct, n)}) to the card of the adapter in
    `directory`: Hub metadata (model-index) and a table; a dataset scored again with the same `settings`
    replaces its row. Only a card a sibo run wrote is edited (the folder's run still owns it, so a later
    `finetune --overwrite` replaces it whole), under the folder's lock; returns the card, or None when it
    was left alone (logged)."""
    from sibo.output_dir import hold_output_dir, run_wrote

    file = Path(directory) / CARD_FILE
    if run_wrote(Path(directory), CARD_FILE) is None:
        logger.info("results not added to %s: no model card that a sibo run wrote", file)
        return None
    try:
        with hold_output_dir(directory):
            card = ModelCard.load(file)
            rows = [r for r in card.data.eval_results or () if not _same_row(r, scores, settings)]
            rows += [_eval_result(name, correct, n, settings) for name, (correct, n) in scores.items()]
            card.data.eval_results = rows
            card.data.model_name = card.data.model_name or Path(directory).resolve().name
            card.text = _with_results_table(card.text, rows)
            card.save(file)
    except (InputError, OSError) as error:  # in use by a run, or read-only: the scores are in summary.json
        logger.warning("results not added to %s: %s", file, first_line(error))
        return None
    return file


def _same_row(row: EvalResult, scores: dict, settings: str) -> bool:
    return row.task_name == EVAL_SOURCE and row.dataset_name in scores and row.metric_config == settings


def _eval_result(name: str, correct: int, n: int, settings: str) -> EvalResult:
    return EvalResult(
        task_type="text-generation",
        dataset_type=name,
        dataset_name=name,
        dataset_split="test",
        metric_type="accuracy",
        metric_value=correct / n if n else 0.0,
        metric_name=f"accuracy ({correct}/{n})",
        metric_config=settings,
        task_name=EVAL_SOURCE,
    )


def _with_results_table(text: str, rows: list[EvalResult]) -> str:
    """The card's text with its `sibo evaluate` section (re)written from `rows`."""
    before, _, rest = text.partition(_RESULTS_BEGIN)
    after = rest.partition(_RESULTS_END)[2] if rest else ""
    table = [
        _RESULTS_BEGIN,
        "## Evaluation (sibo evaluate)",
        "",
        "| dataset | accuracy | scored | settings |",
        "|---|---|---|---|",
        *(
            f"| {r.dataset_name} | {r.metric_value:.4f} | {r.metric_name} | {r.metric_config} |"
            for r in rows
            if r.task_name == EVAL_SOURCE
        ),  # fmt: skip
        _RESULTS_END,
    ]
    return before.rstrip("\n") + "\n\n" + "\n".join(table) + "\n" + after.lstrip("\n")
