"""The README.md of a `sibo export` (--format hf): a Hub model card that says what the folder is and how it loads.

An exact export of a λ > 0 adapter is no ordinary checkpoint: transformers runs it only with
`trust_remote_code=True` (modeling_sibo.py adds λ·ΔW·h0 by hooks) and refuses it otherwise; an approximate one
loads anywhere but is not the adapter. A reader of the folder, or of its Hub page, must learn that here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from sibo.files import RESIDUAL_DIR

CARD_FILE = "README.md"


@dataclass
class ExportFacts:
    """What the card states, gathered by export_adapter."""

    base_model: str | None  # the base the adapter was trained on (its adapter_config.json)
    adapter: str | None  # the adapter folder exported, when known
    lambdas: dict[str, float]  # boosted module -> λ of its block (empty: λ 0, a plain merge)
    learnt: bool  # one learnt λ per block
    residual_modules: int  # modules of the SIBO residual adapter (0: none written)
    max_logit_deviation: float | None  # --approximate: what dropping λ·ΔW·h0 costs on probe prompts
    dtype: str
    size_bytes: int  # the export's files, this card aside
    classifier: bool = False  # a sequence classifier (its trained score head), not a causal LM


def _what(facts: ExportFacts) -> str:
    if facts.residual_modules:
        return (
            f"an exact merged SIBO model: the adapter folded into the base weights, plus in {RESIDUAL_DIR}/ a "
            f"residual adapter on the {facts.residual_modules} boosted modules that adds the λ·ΔW·h0 term no "
            "plain weight can hold; its logits are the adapter's"
        )
    if facts.max_logit_deviation is not None:
        return (
            "an approximate merge of a SIBO adapter: the λ·ΔW·h0 term is dropped, so this is not the adapter "
            f"(largest |Δlogit| on probe prompts: {facts.max_logit_deviation:.6g})"
        )
    return "an exact merge of an adapter with λ 0 (plain PEFT): an ordinary checkpoint"


def _lambda_text(facts: ExportFacts) -> str:
    if not facts.lambdas or (facts.max_logit_deviation is not None and not facts.residual_modules):
        return "0 in this checkpoint" + (" (the adapter's λ was dropped)" if facts.lambdas else "")
    values = sorted(set(facts.lambdas.values()))
    if facts.learnt:
        return "learnt, per block: " + ", ".join(f"{v:.4f}" for v in values)
    return ", ".join(f"{v:g}" for v in values)


def _loading_lines(facts: ExportFacts) -> list[str]:
    remote = ", trust_remote_code=True" if facts.residual_modules else ""
    auto = "AutoModelForSequenceClassification" if facts.classifier else "AutoModelForCausalLM"
    generate = ["```bash", "sibo generate --base_model <this folder> --prompt '…'", "```", ""]
    lines = [
        *([] if facts.classifier else generate),
        "```python",
        f"from transformers import {auto}",
        f"model = {auto}.from_pretrained('<this folder>'{remote})",
        "```",
    ]
    if facts.residual_modules:
        lines += [
            "",
            "transformers refuses it without `trust_remote_code=True`: its modeling_sibo.py adds the λ·ΔW·h0 term",
            "that plain weights cannot hold, so the folder never runs as the merged base alone.",
        ]
    return lines


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub model id ("org/name") and is no local path here."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.startswith((".", "~", "/")) or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def export_card(facts: ExportFacts) -> ModelCard:
    """The card of a finished export."""
    data = ModelCardData(
        library_name="transformers",
        tags=["sibo", "merged"] + (["custom_code"] if facts.residual_modules else []),
        # a Hub id only: the Hub's card metadata refuses a local path, which the text below keeps
        base_model=facts.base_model if _is_hub_id(facts.base_model) else None,
        pipeline_tag="text-classification" if facts.classifier else "text-generation",
    )
    lines = [
        "# A SIBO export (sibo export)",
        "",
        f"This folder holds {_what(facts)}.",
        "",
        f"- λ: {_lambda_text(facts)}",
        f"- needs trust_remote_code: {'yes' if facts.residual_modules else 'no'}",
        f"- base model: {facts.base_model}; adapter: {facts.adapter}",
        f"- format: a transformers checkpoint; dtype: {facts.dtype}; size: {facts.size_bytes / 1e6:.1f} MB",
        "",
        "## Loading it",
        "",
        *_loading_lines(facts),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_export_card(directory: Path, facts: ExportFacts) -> Path:
    """Write the card (replacing the one transformers' save wrote, if any); returns its path."""
    file = Path(directory) / CARD_FILE
    export_card(facts).save(file)
    return file
