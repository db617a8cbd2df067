"""SiboConfig: how one adapter is boosted, and the λ rules, written once for every caller.

Kept apart from `sibo.core.booster` (which needs torch and peft) so that configs and the CLI can
build and check it cheaply, as peft keeps a method's config apart from its layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sibo.errors import InputError

TARGET_POLICIES = ("ffn", "attn", "all")


def check_lambda(lam: object) -> float:
    """`lam` as a float when it is a number in [0, 1]: the one range rule for λ, wherever a λ is given."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0.0 <= lam <= 1.0:
        raise InputError(f"SIBO's λ must be a number in [0, 1], got {lam!r}")
    return float(lam)


@dataclass
class SiboConfig:
    """How one adapter is boosted. Saved beside the adapter as sibo_config.json."""

    lam: float = field(
        default=0.1, metadata={"help": "λ, the share of h0 every boosted branch reads, in [0, 1]"}
    )
    targets: str = field(
        default="ffn",
        metadata={"help": "which branches take h0: 'ffn' (the paper's code), 'attn', or 'all'"},
    )
    learnable_lambda: bool = field(
        default=False,
        metadata={
            "help": "learn one λ per transformer block, initialised at lam, kept in (0, 1) by a sigmoid"
        },
    )

    def __post_init__(self) -> None:
        self.lam = check_lambda(self.lam)
        if self.targets not in TARGET_POLICIES:
            raise InputError(
                f"SIBO targets must be one of {', '.join(TARGET_POLICIES)}, got {self.targets!r}"
            )
        # a learnable λ is sigmoid(θ), θ = logit(λ): finite only strictly inside (0, 1)
        if self.learnable_lambda and not 0.0 < self.lam < 1.0:
            raise InputError(f"a learnable λ starts strictly inside (0, 1), got {self.lam!r}")
