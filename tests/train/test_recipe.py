"""The fine-tuning recipe on a tiny llama: what it writes, what it learns, resume after kill -9, DDP, FSDP2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from fault_checks import add_deeper_model, finetune_args, refused
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, RandomSampler
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

import sibo
from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config
from sibo.errors import InputError
from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_problems
from sibo.testing import build_tiny_model, build_tokenizer, write_training_state
from sibo.train.recipe import (
    FinetuneConfig,
    find_latest_checkpoint,
    finetune,
    is_complete_checkpoint,
    setup,
    training_arguments,
    warmup_warning,
)
from sibo.train.resume import resolve_resume
from sibo.train.setup import gradient_accumulation_steps
from sibo.train.trainer import BATCH_ORDER_FILE, EpochSeededLengthGroupedSampler, SiboTrainer

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# 1 thread per process: tiny models gain nothing from more, and the test machine is shared.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


def accelerate_launch(config: str) -> tuple[str, ...]:
    """`accelerate launch --config_file examples/accelerate/<config>` on a free port. Without GPUs its
    2 processes run on CPU (gloo); accelerate's `--cpu` would start one process, not 2."""
    return ("-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config),
            "--main_process_port", "0")  # fmt: skip


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_problems(16, seed=2)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, records) -> Path:
    path = tmp_path_factory.mktemp("data") / "math.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, records) -> Path:
    """A tiny llama whose weights are large enough (init range 0.2) for LoRA to move its logits."""
    directory = tmp_path_factory.mktemp("base")
    tokenizer = build_tokenizer(
        [build_prompt(r["instruction"]) + r["output"] for r in records], vocab_size=400
    )
    model = build_tiny_model("llama", len(tokenizer), hidden_size=64, ffn_size=128, initializer_range=0.2)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_args(base_model, data_file, output_dir, *extra: str) -> list[str]:
    """Flags for a short run: global batch 4 in micro-batches of 2, no warm-up."""
    return [
        "--base_model", str(base_model), "--data_path", str(data_file), "--output_dir", str(output_dir),
        "--batch_size", "4", "--micro_batch_size", "2", "--warmup_steps", "0", "--learning_rate", "2e-2",
        "--lora_r", "8", "--target_modules", TARGETS, "--logging_steps", "1", *extra,
    ]  # fmt: skip


def losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "train_metrics.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


# ---------------------------------------------------------------- config


def test_defaults_are_the_seeds():
    config = FinetuneConfig(base_model="m")
    seed_defaults = dict(
        data_path="yahma/alpaca-cleaned", output_dir="./lora-alpaca", adapter_name="lora", load_8bit=False,
        batch_size=128, micro_batch_size=4, num_epochs=3, learning_rate=3e-4, cutoff_len=256, val_set_size=2000,
        use_gradient_checkpointing=False, eval_step=200, save_step=200, lora_r=8, lora_alpha=16, lora_dropout=0.05,
        target_modules=None, bottleneck_size=256, non_linearity="tanh", adapter_dropout=0.0,
        use_parallel_adapter=False, use_adapterp=False, scaling=1.0, train_on_inputs=None, group_by_length=False,
        wandb_project="", wandb_run_name="", resume_from_checkpoint=None, warmup_steps=100, save_total_limit=3,
        logging_steps=10,
    )  # fmt: skip
    assert {name: getattr(config, name) for name in seed_defaults} == seed_defaults
    assert (config.embedding_lambda, config.sibo_targets, config.learnable_lambda) == (0.1, "ffn", False)
    assert (config.trust_remote_code, config.load_4bit, config.packing) == (False, False, True)
    # train_on_inputs None: upstream's True with Alpaca's template (the default for instruction records)
    assert config.template == "auto"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_model": ""}, "--base_model is required"),
        ({"adapter_name": "prefix"}, "--adapter_name must be one of lora, dora, bottleneck, got 'prefix'"),
        ({"batch_size": 10, "micro_batch_size": 4}, "--batch_size 10 is not a multiple of --micro_batch_size 4"),
        ({"micro_batch_size": 0}, "--micro_batch_size must be at least 1, got 0"),
        ({"learning_rate": 0.0}, "--learning_rate must be a positive finite number, got 0.0"),
        ({"lora_dropout": 1.0}, r"--lora_dropout must be in \[0, 1\)"),
        ({"embedding_lambda": 1.5}, r"SIBO's λ must be a number in \[0, 1\], got 1.5"),
        ({"learnable_lambda": True, "embedding_lambda": 0.0}, r"a learnable λ starts strictly inside \(0, 1\), got 0.0"),
        ({"ffn": False, "sibo_targets": "ffn"}, "--ffn False means --sibo_targets attn, not ffn"),
        ({"eval_step": 150}, "--save_step 200 must be a multiple of --eval_step 150"),
        ({"load_8bit": True, "load_4bit": True}, "choose one of --load_8bit and --load_4bit"),
        ({"non_linearity": "wiggle"}, "--non_linearity 'wiggle' is not a transformers activation"),
        ({"scaling": "big"}, "--scaling must be a number or 'learned', got 'big'"),
        ({"max_steps": 0}, "--max_steps must be -1 or at least 1"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_the_flag_named(overrides, message):
    with pytest.raises(InputError, match=message):
        FinetuneConfig(**{"base_model": "m", **overrides})


def test_report_to_reaches_transformers_as_a_list_of_names(tmp_path):
    """--report_to "codecarbon, clearml" is two integrations, as FinetuneConfig checked them, not one unknown."""
    from transformers.integrations.integration_utils import (
        ClearMLCallback,
        CodeCarbonCallback,
        get_reporting_integration_callbacks,
    )

    def arguments(**settings) -> TrainingArguments:
        config = FinetuneConfig(base_model="m", output_dir=str(tmp_path), val_set_size=0, **settings)
        run = SimpleNamespace(config=config, val_set=None, accumulation_steps=1, dtype=torch.float32, packing=True,
                              world_size=1)  # fmt: skip
        return training_arguments(run)

    args = arguments(report_to="codecarbon, clearml")
    assert args.report_to == ["codecarbon", "clearml"]
    assert get_reporting_integration_callbacks(args.report_to) == [CodeCarbonCallback, ClearMLCallback]
    assert arguments(report_to="none").report_to == arguments().report_to == []


def test_ffn_flag_is_the_papers_spelling_of_sibo_targets():
    assert FinetuneConfig(base_model="m", ffn=True).sibo_targets == "ffn"
    assert FinetuneConfig(base_model="m", ffn=False).sibo_targets == "attn"
    assert FinetuneConfig(base_model="m", sibo_targets="all").sibo_targets == "all"
    assert FinetuneConfig(base_model="m", ffn=False, sibo_targets="attn").sibo_targets == "attn"


def test_ffn_false_names_the_attention_branches_it_boosts(base_model, data_file, tmp_path, caplog):
    """The seed's code boosts nothing with --ffn False: a seed user meant plain LoRA, so say what happens here."""
    flags = ["--ffn", "False", "--val_set_size", "0"]
    with caplog.at_level("INFO", logger="sibo"):
        setup(parse_config(run_args(base_model, data_file, tmp_path / "run", *flags)))
    assert [r.getMessage() for r in caplog.records if "--ffn False" in r.getMessage()] == [
        "--ffn False boosts the attention branches here (self_attn.k_proj, self_attn.o_proj, self_attn.q_proj, "
        "self_attn.v_proj); LLM-Adapters' code boosts nothing with it. For plain PEFT, use --embedding_lambda 0"
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="sibo"):
        setup(parse_config(run_args(base_model, data_file, tmp_path / "run", "--val_set_size", "0")))
    assert not [r for r in caplog.records if "--ffn" in r.getMessage()]


def test_accumulation_is_the_global_batch_over_micro_batches_and_processes():
    assert gradient_accumulation_steps(128, 4, 1) == 32
    assert gradient_accumulation_steps(16, 4, 2) == 2
    with pytest.raises(
        InputError, match=r"--batch_size 16 is not a multiple of --micro_batch_size 4 × 3 process\(es\) = 12"
    ):
        gradient_accumulation_steps(16, 4, 3)


# ---------------------------------------------------------------- checkpoints


def fake_checkpoint(root: Path, step: int, skip: tuple[str, ...] = (), state: str | None = None) -> Path:
    directory = root / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    if "adapter_model.safetensors" not in skip:
        save_file({"lora_A": torch.zeros(2, 4)}, directory / "adapter_model.safetensors")
    write_training_state(directory, step, skip)
    if state is not None:
        (directory / "trainer_state.json").write_text(state)
    return directory


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    fake_checkpoint(tmp_path, 2)
    complete = fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 12, skip=("trainer_state.json",))  # killed before the state, written last
    fake_checkpoint(tmp_path, 14, state='{"global_step": 14, "log_hist')  # killed while writing the state
    fake_checkpoint(tmp_path, 16, skip=("optimizer.pt",))  # killed while rotation deleted it
    fake_checkpoint(tmp_path, 18, state=json.dumps({"global_step": 4}))  # not this step's state
    (tmp_path / "checkpoint-20-tmp").mkdir()
    assert find_latest_checkpoint(tmp_path) == complete
    assert [is_complete_checkpoint(tmp_path / f"checkpoint-{s}") for s in (2, 10, 12, 14, 16, 18)] == [
        True, True, False, False, False, False,
    ]  # fmt: skip
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_latest_skips_a_damaged_newest_checkpoint_and_names_it(tmp_path, caplog):
    previous = fake_checkpoint(tmp_path, 2)
    damaged = fake_checkpoint(tmp_path, 4)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # complete trainer state, adapter cut short
    assert not is_complete_checkpoint(damaged)
    assert resolve_resume("latest", tmp_path) == (str(previous), None)
    assert f"skipping {damaged}: damaged adapter weights: {weights}: damaged" in caplog.text
    # Named explicitly, it is refused, and the message offers the previous complete one.
    with pytest.raises(InputError) as refused:
        resolve_resume(str(damaged), tmp_path)
    assert str(refused.value) == (
        f"--resume_from_checkpoint {damaged}: damaged adapter weights: {weights}: damaged or not a safetensors "
        "file (invalid header length); resume from the previous complete one with "
        f"--resume_from_checkpoint {previous}"
    )
    # A final adapter (no trainer state) with damaged weights is refused by name too.
    shutil.rmtree(previous)
    (damaged / "trainer_state.json").unlink()
    final = damaged.rename(tmp_path / "adapter")
    with pytest.raises(InputError, match=f"^{final / 'adapter_model.safetensors'}: damaged"):
        resolve_resume(str(final), tmp_path)


@pytest.mark.parametrize(
    ("weights", "optimizer"),
    [("pytorch_model_fsdp_0", "optimizer_0"), ("pytorch_model_fsdp.bin", "optimizer.bin")],
    ids=["sharded", "full"],
)
def test_fsdp_checkpoints_are_complete_without_adapter_files(tmp_path, weights, optimizer):
    # FSDP writes weights and optimizer as folders (sharded) or .bin files (full), one RNG state per rank.
    directory = fake_checkpoint(
        tmp_path, 4, skip=("adapter_model.safetensors", "optimizer.pt", "rng_state.pth")
    )
    for name in (weights, optimizer):
        (directory / name).write_bytes(b"x")  # for the sharded layout, a file stands in for the folder
    torch.save({}, directory / "rng_state_0.pth")  # loaded and checked like the other torch files
    assert find_latest_checkpoint(tmp_path) == directory


# ---------------------------------------------------------------- end to end


@pytest.mark.integration
def test_finetune_writes_a_loadable_adapter_that_learned(base_model, data_file, tmp_path, capsys):
    output_dir = tmp_path / "run"
    extra = ["--num_epochs", "8", "--val_set_size", "4", "--eval_step", "6", "--save_step", "12",
             "--embedding_lambda", "0.2", "--train_on_inputs", "False"]  # fmt: skip
    assert sibo_main(["finetune", *run_args(base_model, data_file, output_dir, *extra)]) == 0
    assert "trained 24 steps" in capsys.readouterr().out

    for name in ("adapter_config.json", "adapter_model.safetensors", "sibo_config.json", "tokenizer.json",
                 "run_config.json", "train_metrics.json", "eval_metrics.json"):  # fmt: skip
        assert (output_dir / name).is_file(), name
    run_config = json.loads((output_dir / "run_config.json").read_text())
    assert run_config["config"]["embedding_lambda"] == 0.2
    assert run_config["resolved"]["gradient_accumulation_steps"] == 2
    assert run_config["resolved"]["packing"] is True
    assert run_config["resolved"]["attention"] == "sibo_packed_sdpa"
    assert run_config["resolved"]["packed_attention"] == (
        "sibo_packed_sdpa attention, SDPA per sequence (bounds from the collator)"
    )
    assert run_config["resolved"]["optim"] == "adamw_torch"  # fused on a GPU
    assert run_config["resolved"]["train_examples"] == 12
    assert run_config["resolved"]["sibo"] == {"lam": 0.2, "targets": "ffn", "learnable_lambda": False}

    train_losses = losses(output_dir)
    assert len(train_losses) == 24
    assert sum(train_losses[-3:]) / 3 < 0.6 * sum(train_losses[:3]) / 3  # memorising 12 records
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    evals = json.loads((output_dir / "eval_metrics.json").read_text())
    assert evals["eval_loss"] == pytest.approx(metrics["best_metric"])  # the best adapter was kept

    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = sibo.load_sibo_model(AutoModelForCausalLM.from_pretrained(base_model), output_dir).eval()
        assert sibo.sibo_settings(tuned).lam == 0.2
        assert not torch.allclose(tuned(ids).logits, base_logits, atol=1e-3)

    # The seed's other resume: from a final adapter, its weights with a fresh schedule.
    again = tmp_path / "again"
    flags = [
        "--max_steps",
        "1",
        "--val_set_size",
        "0",
        "--embedding_lambda",
        "0.2",
        "--train_on_inputs",
        "False",
    ]
    finetune(
        parse_config(
            run_args(base_model, data_file, again, *flags, "--resume_from_checkpoint", str(output_dir))
        )
    )
    assert losses(again)[0] < 0.85 * train_losses[0]  # a fresh adapter starts at the base model's loss


@pytest.mark.parametrize(
    ("warmup", "steps", "expected"),
    [
        (1, 20, None),
        (9, 20, None),
        (10, 20, "--warmup_steps 10 is at least half the 20 planned steps: the learning rate reaches 0.0003 "
                  "only at step 10, then decays to 0 by step 20; lower --warmup_steps for a run this short"),
        (100, 20, "--warmup_steps 100 ≥ the 20 planned steps: the learning rate only climbs to 5.7e-05 of "
                  "--learning_rate 0.0003; lower --warmup_steps for a run this short"),
    ],
)  # fmt: skip
def test_warmup_of_half_the_run_or_more_is_named_with_the_rate_it_reaches(warmup, steps, expected):
    assert warmup_warning(warmup, steps, 3e-4) == expected


def test_finetune_warns_once_when_warmup_outlasts_the_run(base_model, data_file, tmp_path, caplog):
    flags = ["--max_steps", "2", "--val_set_size", "0"]
    argv = run_args(base_model, data_file, tmp_path / "run", *flags)
    argv[argv.index("--warmup_steps") + 1] = "8"
    assert sibo_main(["finetune", *argv]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "--warmup_steps 8 ≥ the 2 planned steps: the learning rate only climbs to 0.0025 of "
        "--learning_rate 0.02; lower --warmup_steps for a run this short"
    ]


KILL_AT_STEP = """
import os, signal, sys
from transformers import TrainerCallback
from sibo.cli.finetune import parse_config
from sibo.train.recipe import finetune

class KillNine(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

finetune(parse_config(sys.argv[1:]), callbacks=[KillNine()])
"""


@pytest.mark.integration
def test_resume_after_kill_9_matches_an_unbroken_run(base_model, data_file, tmp_path):
    # 16 records, batch 4: 4 steps an epoch, 2 epochs; checkpoints at 2, 4, 6; killed during step 6.
    flags = ["--num_epochs", "2", "--val_set_size", "0", "--save_step", "2", "--lora_dropout", "0.1"]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    finetune(parse_config(run_args(base_model, data_file, unbroken, *flags)))

    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, *run_args(base_model, data_file, broken, *flags)],
        env={**SUBPROCESS_ENV, "KILL_AT_STEP": "5"}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert find_latest_checkpoint(broken) == broken / "checkpoint-4"
    # A checkpoint-6 killed mid-write: its adapter is there, its trainer state is not.
    shutil.copytree(
        broken / "checkpoint-4", broken / "checkpoint-6", ignore=shutil.ignore_patterns("trainer_state.json")
    )

    resumed = finetune_subprocess(
        run_args(base_model, data_file, broken, *flags, "--resume_from_checkpoint", "latest")
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from " + str(broken / "checkpoint-4") in resumed.stderr
    expected, actual = (load_file(d / "adapter_model.safetensors") for d in (unbroken, broken))
    assert expected.keys() == actual.keys()
    assert expected  # a dict of tensors: assert_close compares the names too
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert losses(broken)[-4:] == pytest.approx(losses(unbroken)[-4:], rel=1e-5)


class StopAfterStep(TrainerCallback):
    """A crash right after step `step`'s checkpoint is written: the run must resume from that checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step + 1:
            raise RuntimeError(f"stopped after step {self.step}")


@pytest.mark.integration
@pytest.mark.parametrize("packing", ["True", "False"])
def test_a_run_resumed_mid_epoch_two_trains_on_the_unbroken_runs_batches(
    base_model, data_file, tmp_path, packing
):
    # 4 steps an epoch, checkpoints at 2, 4, 6: resumed from checkpoint-6, half-way through epoch 2. Padded batches
    # are length-grouped; their order once came from the global RNG, drawn before resume restores the checkpoint's.
    flags = ["--num_epochs", "2", "--val_set_size", "0", "--save_step", "2", "--packing", packing]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    finetune(parse_config(run_args(base_model, data_file, unbroken, *flags)))
    with pytest.raises(RuntimeError, match="stopped after step 6"):
        finetune(parse_config(run_args(base_model, data_file, broken, *flags)), callbacks=[StopAfterStep(6)])

    finetune(
        parse_config(run_args(base_model, data_file, broken, *flags, "--resume_from_checkpoint", "latest"))
    )
    assert losses(broken) == losses(unbroken)
    expected, actual = (load_file(d / "adapter_model.safetensors") for d in (unbroken, broken))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.integration
def test_a_padded_checkpoint_from_before_seeded_orders_resumes_on_its_own_order(
    base_model, data_file, tmp_path, monkeypatch
):
    """A checkpoint without BATCH_ORDER_FILE was written when padded batches came from transformers' sampler: a
    run resumed from it in epoch 1 keeps that sampler, so it trains as the run it continues would have."""
    flags = ["--num_epochs", "1", "--val_set_size", "0", "--save_step", "2", "--packing", "False"]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    with monkeypatch.context() as old_code:  # the sampler before 2026-12-08
        old_code.setattr(SiboTrainer, "_get_train_sampler", Trainer._get_train_sampler)
        finetune(parse_config(run_args(base_model, data_file, unbroken, *flags)))
        with pytest.raises(RuntimeError, match="stopped after step 2"):
            finetune(
                parse_config(run_args(base_model, data_file, broken, *flags)), callbacks=[StopAfterStep(2)]
            )
    (broken / "checkpoint-2" / BATCH_ORDER_FILE).unlink()  # as the old code wrote it
    finetune(
        parse_config(run_args(base_model, data_file, broken, *flags, "--resume_from_checkpoint", "latest"))
    )
    assert losses(broken) == losses(unbroken)
    assert (broken / "checkpoint-4" / BATCH_ORDER_FILE).is_file()  # checkpoints written now say so


@pytest.mark.parametrize("packing", [True, False])
def test_a_resumed_ddp_loader_gets_the_unbroken_runs_batches(packing):
    # Rank 0 of 2 as accelerate shards the loader, resumed 2 batches into epoch 2 as Trainer resumes it. Packed:
    # accelerate's SeedableRandomSampler, told the epoch by set_epoch. Padded: set_epoch does not reach a sampler
    # through SkipBatchSampler(BatchSamplerShard(…)), so sibo's sampler reads the epoch from the Trainer's state.
    state = SimpleNamespace(epoch=0)

    def rank_0_loader():
        lengths = [1 + (i * 7) % 13 for i in range(32)]
        sampler = (
            RandomSampler(lengths)
            if packing
            else EpochSeededLengthGroupedSampler(4, lengths, seed=42, epoch=lambda: state.epoch)
        )
        loader = DataLoader(range(32), batch_size=2, sampler=sampler)
        return prepare_data_loader(
            loader, num_processes=2, process_index=0, use_seedable_sampler=True, data_seed=42
        )

    loader = rank_0_loader()
    unbroken = []
    for state.epoch in range(3):
        loader.set_epoch(state.epoch)
        unbroken.append([batch.tolist() for batch in loader])
    resumed = skip_first_batches(rank_0_loader(), 2)
    resumed.set_epoch(2)
    assert [batch.tolist() for batch in resumed] == unbroken[2][2:] != unbroken[0][2:]


KILL_DURING_SAVE = """
import os, signal, sys
import peft.peft_model
from safetensors.torch import save
from sibo.cli.finetune import parse_config
from sibo.train.recipe import finetune

save_file = peft.peft_model.safe_save_file

def killed_halfway(tensors, filename, metadata=None):
    if os.environ["KILL_IN"] in str(filename):  # half the adapter reached the disk, then kill -9
        with open(filename, "wb") as out:
            out.write(save(tensors, metadata)[:1000])
        os.kill(os.getpid(), signal.SIGKILL)
    save_file(tensors, filename, metadata=metadata)

peft.peft_model.safe_save_file = killed_halfway
finetune(parse_config(sys.argv[1:]))
"""


@pytest.mark.integration
def test_resume_skips_a_checkpoint_killed_while_saving_and_a_damaged_one(
    base_model, data_file, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="sibo")
    flags = ["--max_steps", "4", "--val_set_size", "0", "--save_step", "2"]
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, *run_args(base_model, data_file, run, *flags)],
        env={**SUBPROCESS_ENV, "KILL_IN": "checkpoint-4"}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoint-4" / "adapter_model.safetensors").stat().st_size == 1000
    assert is_complete_checkpoint(run / "checkpoint-2") and not is_complete_checkpoint(run / "checkpoint-4")

    resume = ["finetune", *run_args(base_model, data_file, run, *flags, "--resume_from_checkpoint", "latest")]
    assert sibo_main(resume) == 0
    assert f"skipping {run / 'checkpoint-4'}: only partly written" in caplog.text
    assert f"resuming from {run / 'checkpoint-2'}" in caplog.text
    assert json.loads((run / "train_metrics.json").read_text())["global_step"] == 4
    assert is_complete_checkpoint(run / "checkpoint-4")  # written again by the resumed run

    # A finished checkpoint damaged afterwards (its trainer state intact): `latest` takes the one before it.
    caplog.clear()
    weights = run / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))
    more = [*flags[2:], "--max_steps", "6", "--resume_from_checkpoint", "latest"]
    assert sibo_main(["finetune", *run_args(base_model, data_file, run, *more)]) == 0
    assert f"skipping {run / 'checkpoint-4'}: damaged adapter weights: {weights}: damaged" in caplog.text
    assert f"resuming from {run / 'checkpoint-2'}" in caplog.text
    assert json.loads((run / "train_metrics.json").read_text())["global_step"] == 6


def finetune_subprocess(
    args: list[str], launcher: tuple[str, ...] = (), script: tuple[str, ...] = ("-m", "sibo", "finetune")
) -> subprocess.CompletedProcess:
    command = [sys.executable, *launcher, *script, *args]
    # A session of its own, so that a hung run's worker processes die with their launcher.
    with subprocess.Popen(
        command,
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.integration
@pytest.mark.parametrize(
    "launcher",
    [("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"), accelerate_launch("ddp.yaml")],
    ids=["torchrun", "accelerate"],
)
def test_two_cpu_processes_match_one_process(base_model, data_file, tmp_path, launcher):
    # Global batch 4: 1 process × 2 micro × 2 accumulation, or 2 processes (gloo) × 2 micro × 1.
    # Gradient checkpointing on: DDP must not see parameters "marked ready twice".
    flags = ["--num_epochs", "1", "--val_set_size", "0", "--save_step", "100", "--lora_dropout", "0",
             "--use_gradient_checkpointing"]  # fmt: skip
    two = finetune_subprocess(run_args(base_model, data_file, tmp_path / "ddp", *flags), launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("2 micro × 1 accumulation × 2 process(es)") == 1  # rank 0 alone logs setup
    assert json.loads((tmp_path / "ddp" / "run_config.json").read_text())["resolved"]["world_size"] == 2

    finetune(parse_config(run_args(base_model, data_file, tmp_path / "one", *flags)))
    assert len(losses(tmp_path / "ddp")) == 4
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    expected, actual = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "ddp"))
    assert expected  # a dict of tensors: assert_close compares the names too
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


FSDP2_ON_CPU = """
import logging, sys
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from transformers import TrainerCallback
from sibo.cli.finetune import parse_config
from sibo.train.recipe import finetune

# accelerate runs gloo processes as MULTI_CPU and drops the FSDP plugin there (it shards on accelerators
# only); switch FSDP back on, so that the Trainer prepares, saves and loads the model as on GPUs.
accelerate_init = AcceleratorState.__init__

def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerate_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin

AcceleratorState.__init__ = fsdp_on_cpu

class ReportSharding(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
        print(f"{type(model).__name__}: {sharded} DTensor parameters", flush=True)

logging.basicConfig(level=logging.INFO)
finetune(parse_config(sys.argv[1:]), callbacks=[ReportSharding()])
"""


@pytest.mark.integration
def test_fsdp2_on_two_cpu_processes_matches_one_process(base_model, data_file, tmp_path):
    # examples/accelerate/fsdp.yaml as is, FSDP2 switched on for gloo (FSDP2_ON_CPU). λ is learnable: it
    # moves only if SIBO's h0 capture and mixing hooks fire in the sharded blocks, and it must be saved
    # whole (not one rank's shard), kept with the best checkpoint and restored on resume.
    flags = ["--num_epochs", "2", "--val_set_size", "4", "--eval_step", "2", "--save_step", "2",
             "--lora_dropout", "0", "--embedding_lambda", "0.3", "--learnable_lambda"]  # fmt: skip
    script = tmp_path / "fsdp2_on_cpu.py"
    script.write_text(FSDP2_ON_CPU)
    fsdp, resumed, one = tmp_path / "fsdp", tmp_path / "resumed", tmp_path / "one"
    sharded = finetune_subprocess(
        run_args(base_model, data_file, fsdp, *flags), accelerate_launch("fsdp.yaml"), (str(script),)
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # Both ranks hold every parameter (21 base, 28 LoRA, λ) as a shard.
    assert sharded.stdout.count("FSDPSiboPeftModelForCausalLM: 50 DTensor parameters") == 2
    assert json.loads((fsdp / "run_config.json").read_text())["resolved"]["world_size"] == 2

    finetune(parse_config(run_args(base_model, data_file, one, *flags)))
    assert len(losses(fsdp)) == 6
    assert losses(fsdp) == pytest.approx(losses(one), rel=1e-4)
    best = [json.loads((d / "train_metrics.json").read_text())["best_checkpoint"] for d in (one, fsdp)]
    assert [Path(b).name for b in best] == ["checkpoint-6", "checkpoint-6"]  # kept as the final adapter
    expected, actual = (load_file(d / "adapter_model.safetensors") for d in (one, fsdp))
    assert expected  # a dict of tensors: assert_close compares the names too
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    settings = [json.loads((d / "sibo_config.json").read_text()) for d in (one, fsdp)]
    assert settings[1]["lambda_per_block"] == pytest.approx(settings[0]["lambda_per_block"], rel=1e-4)
    assert settings[1]["lambda_per_block"] != pytest.approx([0.3, 0.3], abs=1e-4)  # λ was trained
    reloaded = sibo.load_sibo_model(AutoModelForCausalLM.from_pretrained(base_model), fsdp)
    assert sibo.sibo_settings(reloaded).learnable_lambda

    # Resume from FSDP's checkpoint-2: the same adapter and λ as the unbroken run.
    resumed.mkdir()
    shutil.copytree(fsdp / "checkpoint-2", resumed / "checkpoint-2")
    again = finetune_subprocess(
        run_args(base_model, data_file, resumed, *flags, "--resume_from_checkpoint", "latest"),
        accelerate_launch("fsdp.yaml"),
        (str(script),),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from " + str(resumed / "checkpoint-2") in again.stderr
    expected, actual = (load_file(d / "adapter_model.safetensors") for d in (fsdp, resumed))
    assert expected  # a dict of tensors: assert_close compares the names too
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    saved = [json.loads((d / "sibo_config.json").read_text())["lambda_logits"] for d in (fsdp, resumed)]
    assert saved[1] == pytest.approx(saved[0], rel=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize(
    "variant",
    [
        ["--adapter_name", "dora", "--learnable_lambda"],
        ["--adapter_name", "bottleneck", "--bottleneck_size", "16", "--target_modules", "up_proj,down_proj"],
        [
            "--adapter_name",
            "bottleneck",
            "--bottleneck_size",
            "16",
            "--use_parallel_adapter",
            "--sibo_targets",
            "all",
        ],
    ],
    ids=["dora-learnable-lambda", "adapterh", "parallel"],
)
def test_adapter_variants_train_and_reload_with_their_sibo_settings(base_model, data_file, tmp_path, variant):
    output_dir = tmp_path / "run"
    flags = ["--max_steps", "3", "--val_set_size", "0", "--embedding_lambda", "0.3", *variant]
    metrics = finetune(parse_config(run_args(base_model, data_file, output_dir, *flags)))
    assert metrics["train"]["global_step"] == 3
    settings = json.loads((output_dir / "sibo_config.json").read_text())
    assert settings["lam"] == 0.3 and settings["boosted_modules"]
    if "--learnable_lambda" in variant:
        assert settings["lambda_per_block"] != pytest.approx([0.3, 0.3], abs=1e-6)  # λ was trained
    reloaded = sibo.load_sibo_model(AutoModelForCausalLM.from_pretrained(base_model), output_dir)
    assert sibo.sibo_settings(reloaded).learnable_lambda == ("--learnable_lambda" in variant)


@pytest.mark.integration
def test_gradient_checkpointing_trains_the_same_adapter(base_model, data_file, tmp_path):
    flags = ["--max_steps", "2", "--val_set_size", "0", "--lora_dropout", "0", "--embedding_lambda", "0.3"]
    for name, extra in (("plain", []), ("checkpointed", ["--use_gradient_checkpointing"])):
        finetune(parse_config(run_args(base_model, data_file, tmp_path / name, *flags, *extra)))
    expected, actual = (
        load_file(tmp_path / d / "adapter_model.safetensors") for d in ("plain", "checkpointed")
    )
    assert expected  # a dict of tensors: assert_close compares the names too
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qlora_4bit_base_trains_on_cuda(base_model, data_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    output_dir = tmp_path / "qlora"
    flags = ["--max_steps", "2", "--val_set_size", "0", "--load_4bit", "--use_gradient_checkpointing"]
    metrics = finetune(parse_config(run_args(base_model, data_file, output_dir, *flags)))
    assert metrics["train"]["global_step"] == 2
    assert (
        json.loads((output_dir / "run_config.json").read_text())["resolved"]["bf16"]
        == torch.cuda.is_bf16_supported()
    )
    assert (output_dir / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def root(root):
    add_deeper_model(root)
    return root


@pytest.mark.integration
def test_a_cutoff_len_beyond_the_context_is_refused_as_generate_and_evaluate_refuse_it(
    root, tmp_path, capsys
):
    limit = json.loads((root / "base4" / "config.json").read_text())["max_position_embeddings"]
    line = refused(capsys, finetune_args(root, tmp_path / "out", "--cutoff_len", str(limit + 1)), tmp_path)
    assert line == (
        f"sibo finetune: error: --cutoff_len {limit + 1} is longer than the context of {root / 'base4'} "
        f"({limit} tokens)"
    )


@pytest.mark.integration
def test_finetune_refuses_to_start_from_an_adapter_of_another_depth(root, tmp_path, capsys):
    argv = [
        *finetune_args(root, tmp_path / "out", "--max_steps", "1"),
        "--resume_from_checkpoint",
        root / "adapter6",
    ]
    line = refused(capsys, argv, root / "adapter6", tmp_path)
    assert line == (
        f"sibo finetune: error: --resume_from_checkpoint {root / 'adapter6'}: does not fit this adapter (the adapter "
        f"at {root / 'adapter6'} does not fit the base model (llama, 4 layers, hidden size 32): its tensor "
        "base_model.model.model.layers.4.mlp.up_proj.lora_A.weight [4, 32] has no module in the base)"
    )


def test_a_learnt_lambda_under_fsdp_needs_fsdp2_and_full_state_dicts():
    """FSDP1 and sharded state dicts save PEFT's adapter weights alone: a learnt λ would restart on resume."""
    from types import SimpleNamespace

    from torch.distributed.fsdp import StateDictType

    from sibo.train.recipe import refuse_fsdp_dropping_lambda

    refuse_fsdp_dropping_lambda(
        SimpleNamespace(fsdp_version=2, state_dict_type=StateDictType.FULL_STATE_DICT)
    )
    for version, kind in ((1, StateDictType.FULL_STATE_DICT), (2, StateDictType.SHARDED_STATE_DICT)):
        with pytest.raises(InputError) as refused:
            refuse_fsdp_dropping_lambda(SimpleNamespace(fsdp_version=version, state_dict_type=kind))
        assert str(refused.value) == (
            "--learnable_lambda under FSDP needs fsdp_version: 2 and fsdp_state_dict_type: FULL_STATE_DICT (this "
            f"launch: version {version}, {kind.name}): otherwise checkpoints drop the learnt λ, and resume and the "
            "best checkpoint restart it; see examples/accelerate/fsdp.yaml"
        )
