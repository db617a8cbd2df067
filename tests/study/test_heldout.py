"""Held-out loss against a hand computation on a tiny model, and at the steps asked for while training."""

import math

import pytest
import torch

from sibo.data import build_example
from sibo.prompts import build_prompt
from sibo.study.heldout import Reference, answer_start, encode_references, held_out_losses
from sibo.testing import build_tiny_model, build_tokenizer

OUTPUT = "\nA: 3 + 4 = 7 apples. The answer is 7."
REFERENCES = [
    Reference("AddSub/0", "Tom has 3 apples and buys 4 more. How many?", OUTPUT),
    Reference("AddSub/1", "Ann has 2 pears. How many?", "She has 2 pears."),  # no answer phrase
]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer([build_prompt(r.instruction) + r.output for r in REFERENCES], vocab_size=200)
    torch.manual_seed(0)
    return build_tiny_model("llama", len(tokenizer)).eval(), tokenizer


def test_the_answer_phrase_starts_at_the_whitespace_before_the_last_one():
    assert OUTPUT[answer_start(OUTPUT) :] == " The answer is 7."
    assert answer_start("So the answer is 1. Then The answer is 2.") == len("So the answer is 1. Then")
    assert answer_start("no phrase") is None


def test_losses_equal_a_hand_computation_and_the_training_loss(tiny):
    model, tokenizer = tiny
    encoded = encode_references(REFERENCES, tokenizer)
    losses = held_out_losses(model, encoded, batch_size=2)  # both in one right-padded batch

    prompt = tokenizer(build_prompt(REFERENCES[0].instruction))["input_ids"]
    head = tokenizer(OUTPUT[: answer_start(OUTPUT)], add_special_tokens=False)["input_ids"]
    output = tokenizer(OUTPUT, add_special_tokens=False)["input_ids"]
    ids = prompt + output + [tokenizer.eos_token_id]
    assert encoded[0].input_ids == ids
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)  # (T, V)
    nll = [-float(log_probs[t - 1, ids[t]]) for t in range(len(ids))]
    rationale = nll[len(prompt) :]  # every output token and the EOS
    # the answer phrase: the output tokens past the rationale's head (the head tokenizes alike here)
    assert output[: len(head)] == head
    answer = nll[len(prompt) + len(head) : len(prompt) + len(output)]
    assert losses["rationale"][0] == pytest.approx(sum(rationale) / len(rationale), rel=1e-5)
    assert losses["answer"][0] == pytest.approx(sum(answer) / len(answer), rel=1e-5)
    assert math.isnan(losses["answer"][1])
    # the rationale loss is the recipe's training loss on that record (prompt masked, output + EOS)
    example, _ = build_example(prompt, output + [tokenizer.eos_token_id], 1024, train_on_inputs=False)
    with torch.no_grad():
        trained = model(torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]])).loss
    assert losses["rationale"][0] == pytest.approx(float(trained), rel=1e-5)
    # batching and padding change nothing
    alone = held_out_losses(model, encoded[1:], batch_size=1)
    assert alone["rationale"][0] == pytest.approx(losses["rationale"][1], rel=1e-5)
    assert not model.training
