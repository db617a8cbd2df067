"""Writes pre31/: SIBO adapters as sibo wrote them before issue 31 (PEFT's LORA type + sibo_config.json).

Run once, with the code of main at a7de715; the folder is kept so that later code is tested against
what earlier code wrote: `python tests/checkpoint/data/write_pre31_adapters.py`.
"""

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

import sibo
from sibo.testing import build_tiny_model

HERE = Path(__file__).parent / "pre31"
INPUT_IDS = torch.tensor([[1, 5, 9, 14, 3, 27, 8]])


def main() -> None:
    base = build_tiny_model("llama", 32, num_layers=2, hidden_size=8, num_heads=2, ffn_size=16)
    base.save_pretrained(HERE / "base")
    expected = {}
    for name, learnable in (("fixed", False), ("learnt", True)):
        config = LoraConfig(
            r=2,
            target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
            init_lora_weights=False,  # B random too, so the adapter changes the logits
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(1)
        model = sibo.get_sibo_model(
            build_tiny_model("llama", 32, num_layers=2, hidden_size=8, num_heads=2, ffn_size=16),
            config,
            lam=0.3,
            learnable_lambda=learnable,
        )
        if learnable:
            with torch.no_grad():
                model.sibo_lambdas["default"].logits.copy_(torch.tensor([-0.4, 0.9]))
        model.save_pretrained(HERE / name)
        with torch.no_grad():
            expected[name] = model(input_ids=INPUT_IDS).logits[0]
    save_file(expected, HERE / "expected_logits.safetensors")


if __name__ == "__main__":
    main()
