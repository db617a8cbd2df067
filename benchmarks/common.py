"""What every benchmark script shares: the model shapes, the device flag, honest timing on it, and the
machine's name."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from sibo.checkpoint.load import resolve_dtype
from sibo.testing import build_tiny_model


@dataclass(frozen=True)
class ModelShape:
    """A LLaMA-style model's widths; the benchmarks build it from its config with random weights."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None = None  # None: the script's (its tokenizer's)
    tied_embeddings: bool = False

    def describe(self) -> str:
        vocab = f"vocab {self.vocab:,}" if self.vocab else "the script's vocab"
        tied = "tied" if self.tied_embeddings else "untied"
        return (
            f"{self.layers} × {self.hidden}, {self.heads} heads / {self.kv_heads} KV heads, "
            f"FFN {self.ffn}, {vocab}, {tied} embeddings"
        )

    def build(
        self, vocab_size: int, device: str, max_positions: int = 2048, seed: int = 0
    ) -> torch.nn.Module:
        """A random LLaMA of this shape (its vocab, else `vocab_size`), in eval mode, made on `device`."""
        with torch.device(device):  # random init on the GPU: seconds less per 0.5B model than on the host
            return build_tiny_model(
                "llama", self.vocab or vocab_size, seed, max_positions=max_positions, num_layers=self.layers,
                hidden_size=self.hidden, num_heads=self.heads, num_key_value_heads=self.kv_heads,
                ffn_size=self.ffn, tie_word_embeddings=self.tied_embeddings,
            )  # fmt: skip


def llm_adapters_dir() -> Path:
    """LLM-Adapters' benchmark data: $SIBO_DATA_DIR, else the team's copy beside this checkout."""
    return Path(
        os.environ.get("SIBO_DATA_DIR")
        or Path(__file__).resolve().parents[1].parent / "shared/data/llm-adapters"
    )


# The real models' widths, shared by every script that takes --shape (benchmarks/gpu_check.sh uses both).
SHAPES = {
    "smollm2-135m": ModelShape(30, 576, 9, 3, 1536, vocab=49152, tied_embeddings=True),
    # ~0.5B: 24 × (4·1280² + 3·1280·3440) ≈ 0.47B in the blocks; head_dim 128, a width torch's flash
    # varlen kernel takes (sibo's packed rows on CUDA)
    "0.5b": ModelShape(24, 1280, 10, 10, 3440),
}


def add_shape_flag(parser, own: str, description: str) -> None:
    """--shape: the script's own small model (`own`, the default) or one of SHAPES."""
    parser.add_argument(
        "--shape",
        choices=(own, *SHAPES),
        default=own,
        help=f"model config: {own} ({description}, the default); "
        + "; ".join(f"{name} ({shape.describe()})" for name, shape in SHAPES.items()),
    )


def add_device_flag(parser) -> None:
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when there is one); on cuda the model runs in bf16 (fp16) as sibo's verbs do",
    )


def compute_dtype(device: str) -> torch.dtype:
    """What sibo's verbs choose on that device (`resolve_dtype`): bf16 or fp16 on a GPU, fp32 on CPU."""
    return resolve_dtype("auto") if device.startswith("cuda") else torch.float32


def autocast(device: str):
    """The Trainer's mixed precision on a GPU: fp32 weights and optimizer, bf16 (or fp16) matmuls."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=compute_dtype(device))
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers the work it claims to."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def describe_machine(device: str = "cpu") -> str:
    """CPU model and cores, plus the GPU when the run is on one."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.startswith("cuda"):
        text += f", {torch.cuda.get_device_name()}"
    return text
