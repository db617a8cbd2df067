"""What every benchmark script shares: the device flag, honest timing on it, and the machine's name."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from sibo.loading import resolve_dtype


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
