"""What every benchmark script shares: the device flag, honest timing on it, and the machine's name."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def add_device_flag(parser) -> None:
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when there is one); on cuda the model runs in bf16 as sibo's verbs do",
    )


def compute_dtype(device: str) -> torch.dtype:
    """bf16 on a GPU that has it (what `sibo finetune/evaluate/generate` choose there), else fp32."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(device: str):
    """The Trainer's bf16 mixed precision on a GPU: fp32 weights and optimizer, bf16 matmuls."""
    if compute_dtype(device) == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
