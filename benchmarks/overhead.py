"""SIBO's training overhead: step time and memory of LoRA-SIBO vs plain PEFT LoRA, side by side.

    python benchmarks/overhead.py                 # LLaMA-style, 8 layers, hidden 512, sequence 256
    python benchmarks/overhead.py --repeats 20 --batch 4
    python benchmarks/overhead.py --device cuda --shape 0.5b

Both models are built from the same config (`--shape`: custom --layers × --hidden, or one of
common.SHAPES) and seed, with the seed's LoRA recipe (r 32, alpha 64, dropout 0.05 on
q,k,v,up,down; SIBO λ 0.1 on the feed-forward branches). Step times are interleaved (plain, SIBO,
plain, …) and compared by their medians; on CUDA the forwards run under the same bf16 (fp16)
autocast as finetune_throughput.py and sibo finetune (fp32 weights and optimizer). Memory: on CUDA
the peak allocated bytes of a step; on CPU (no allocator statistics) the bytes autograd saves for
the backward pass (exact, from saved-tensor hooks) and the peak RSS growth of a fresh process
running the steps (median of --rss_runs processes). Prints ratios SIBO / plain; the target is
≤ 1.03 for time and memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import SHAPES, ModelShape, add_shape_flag, autocast
from peft import LoraConfig, get_peft_model

from sibo import get_sibo_model

VARIANTS = ("plain", "sibo")
VOCAB = 8000  # the custom shape's; the random token ids come from its range on every shape


def build(variant: str, args) -> torch.nn.Module:
    shape = SHAPES.get(args.shape, ModelShape(args.layers, args.hidden, 8, 8, int(args.hidden * 2.6875)))
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=args.dropout, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")  # fmt: skip
    base = shape.build(VOCAB, args.device, max_positions=args.seq)
    torch.manual_seed(1)  # the adapters' init: the same for both variants
    if variant == "plain":
        model = get_peft_model(base, lora)
    else:
        model = get_sibo_model(base, lora, lam=0.1, targets=args.targets)
    return model.to(args.device).train()


def batch(args) -> torch.Tensor:
    return torch.randint(0, VOCAB, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(
        args.device
    )


def step(model, optimizer, ids) -> None:
    with autocast(ids.device.type):  # bf16 matmuls on a GPU, as sibo finetune trains; nothing on CPU
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def saved_activation_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(ids.device.type):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def child(variant: str, args) -> None:
    """Run the steps in a fresh process and report its peak RSS growth (KiB)."""
    model, ids = build(variant, args), batch(args)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = current_rss_kib()
    for _ in range(3):
        step(model, optimizer, ids)
    print(json.dumps({"rss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_flag(parser, "custom", "--layers × --hidden, 8 heads, FFN 2.6875 × hidden, vocab 8,000")
    parser.add_argument("--layers", type=int, default=8, help="blocks of the custom shape")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size of the custom shape")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--targets", default="ffn", choices=["ffn", "attn", "all"])
    parser.add_argument(
        "--rss_runs", type=int, default=3, help="CPU: fresh processes per variant for the peak RSS (median)"
    )
    parser.add_argument("--dropout", type=float, default=0.05, help="lora_dropout (the seed's 0.05)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)

    models = {v: build(v, args) for v in VARIANTS}
    optimizers = {
        v: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for v, m in models.items()
    }
    ids = batch(args)
    times = {v: [] for v in VARIANTS}
    peaks = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up
        step(models[v], optimizers[v], ids)
    for _ in range(args.repeats):
        for v in VARIANTS:
            if args.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            step(models[v], optimizers[v], ids)
            if args.device == "cuda":
                torch.cuda.synchronize()
                peaks[v].append(torch.cuda.max_memory_allocated())
            times[v].append(time.perf_counter() - start)

    median = {v: statistics.median(times[v]) for v in VARIANTS}
    config = models["plain"].config
    saved = {v: saved_activation_bytes(models[v], ids) for v in VARIANTS}
    print(
        f"model: LLaMA {args.shape} {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, FFN {config.intermediate_size}, sequence {args.seq}, "
        f"batch {args.batch}, {args.device}"
    )
    print(f"step time (median of {args.repeats}, interleaved): plain {median['plain'] * 1e3:.1f} ms, "
          f"SIBO {median['sibo'] * 1e3:.1f} ms, ratio {median['sibo'] / median['plain']:.3f}")  # fmt: skip
    print(f"saved activations: plain {saved['plain'] / 2**20:.1f} MiB, SIBO {saved['sibo'] / 2**20:.1f} MiB, "
          f"ratio {saved['sibo'] / saved['plain']:.3f}")  # fmt: skip
    if args.device == "cuda":
        peak = {v: statistics.median(peaks[v]) for v in VARIANTS}
        print(f"peak CUDA memory: plain {peak['plain'] / 2**20:.1f} MiB, SIBO {peak['sibo'] / 2**20:.1f} MiB, "
              f"ratio {peak['sibo'] / peak['plain']:.3f}")  # fmt: skip
        return
    flags = [
        f"--{k}={getattr(args, k)}"
        for k in ("shape", "layers", "hidden", "seq", "batch", "targets", "dropout", "device")
    ]
    growth = {v: [] for v in VARIANTS}
    for _ in range(args.rss_runs):
        for v in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", v, *flags], capture_output=True, text=True, check=True
            )
            growth[v].append(json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_kib"])
    rss = {v: statistics.median(growth[v]) for v in VARIANTS}
    print(f"peak RSS growth over 3 steps (median of {args.rss_runs} processes): plain {rss['plain'] / 1024:.1f} MiB, "
          f"SIBO {rss['sibo'] / 1024:.1f} MiB, ratio {rss['sibo'] / rss['plain']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
