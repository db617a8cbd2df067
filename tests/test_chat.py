"""Chat records: checked, rendered with the tokenizer's chat template exactly as `apply_chat_template`
renders them, and labelled on the assistant turns only."""

from __future__ import annotations

import json

import pytest

from sibo.chat import render
from sibo.data import IGNORE_INDEX, tokenize_dataset
from sibo.data_sources import load_record_dataset
from sibo.errors import InputError
from sibo.prompts import PromptTemplate
from sibo.testing import add_chat_template, build_tokenizer

CHAT = PromptTemplate("chat")
CONVERSATION = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "And 4 more?"},
    {"role": "assistant", "content": "5 + 4 = 9."},
]
SHAREGPT = [
    {"from": {"user": "human", "assistant": "gpt"}.get(turn["role"], turn["role"]), "value": turn["content"]}
    for turn in CONVERSATION
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [turn["content"] for turn in CONVERSATION] * 3
    return add_chat_template(build_tokenizer(corpus, vocab_size=300))


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def tokenized(tokenizer, data_path: str, cutoff_len: int = 512, train_on_inputs: bool = False, **columns):
    dataset = load_record_dataset(data_path, columns or None)
    return tokenize_dataset(dataset, tokenizer, cutoff_len, train_on_inputs, template=CHAT, where=data_path)


def expected_labels(tokenizer, conversation) -> tuple[list[int], list[int]]:
    """ChatML written out by hand, turn by turn: the assistant's content and its `<|im_end|>\\n` learned."""
    ids, labels = [], []
    for turn in conversation:
        head = tokenizer(f"<|im_start|>{turn['role']}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(turn["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids += head + body
        labels += [IGNORE_INDEX] * len(head) + (
            body if turn["role"] == "assistant" else [IGNORE_INDEX] * len(body)
        )
    return ids, labels


@pytest.mark.parametrize("shape", ["messages", "sharegpt"])
def test_chat_records_tokenize_as_apply_chat_template_and_learn_the_assistant_turns(
    tokenizer, tmp_path, shape
):
    record = {"messages": CONVERSATION} if shape == "messages" else {"conversations": SHAREGPT}
    example = tokenized(tokenizer, write_jsonl(tmp_path / "chat.jsonl", [record])).examples[0]
    assert example["input_ids"] == tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    assert (example["input_ids"], example["labels"]) == expected_labels(tokenizer, CONVERSATION)
    learned = tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])
    assert learned == "2 + 3 = 5.<|im_end|>\n5 + 4 = 9.<|im_end|>\n"


def test_train_on_inputs_learns_every_token(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    example = tokenized(tokenizer, path, train_on_inputs=True).examples[0]
    assert (
        example["labels"] == example["input_ids"] == tokenizer.apply_chat_template(CONVERSATION)["input_ids"]
    )


def test_a_json_list_and_jsonl_give_the_same_examples(tokenizer, tmp_path):
    records = [{"messages": CONVERSATION}, {"conversations": SHAREGPT[1:3]}]
    (tmp_path / "chat.json").write_text(json.dumps(records))
    from_list = tokenized(tokenizer, str(tmp_path / "chat.json")).examples
    from_lines = tokenized(tokenizer, write_jsonl(tmp_path / "chat.jsonl", records)).examples
    assert from_list.to_list() == from_lines.to_list()
    assert from_list[1]["input_ids"] == tokenizer.apply_chat_template(CONVERSATION[1:3])["input_ids"]


def test_instruction_records_with_the_chat_template_are_one_user_turn_and_its_reply(tokenizer, tmp_path):
    record = {"instruction": "Add 2 and 3.", "input": "Show the sum.", "output": "2 + 3 = 5."}
    example = tokenized(tokenizer, write_jsonl(tmp_path / "alpaca.jsonl", [record])).examples[0]
    turns = [
        {"role": "user", "content": "Add 2 and 3.\n\nShow the sum."},
        {"role": "assistant", "content": "2 + 3 = 5."},
    ]
    assert (example["input_ids"], example["labels"]) == expected_labels(tokenizer, turns)


def test_a_mapped_column_holds_the_conversations(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"dialogue": CONVERSATION, "id": 7}])
    example = tokenized(tokenizer, path, messages="dialogue").examples[0]
    assert example["input_ids"] == tokenizer.apply_chat_template(CONVERSATION)["input_ids"]


def test_cutoff_truncates_and_drops_a_record_with_no_assistant_token_left(tokenizer, tmp_path):
    full = len(tokenizer.apply_chat_template(CONVERSATION)["input_ids"])
    first_reply = len(expected_labels(tokenizer, CONVERSATION[:2])[0])  # the reply starts here
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    cut = tokenized(tokenizer, path, cutoff_len=full - 3)
    assert (cut.truncated, cut.dropped, len(cut.examples[0]["input_ids"])) == (1, 0, full - 3)
    # Cut where the first reply begins: no assistant token is left to learn, so the record is dropped.
    dropped = tokenized(tokenizer, path, cutoff_len=first_reply)
    assert (dropped.truncated, dropped.dropped, len(dropped.examples)) == (1, 1, 0)
    # With train_on_inputs it is kept, and counted as training on its prompt alone (finetune warns of it).
    kept = tokenized(tokenizer, path, cutoff_len=first_reply, train_on_inputs=True)
    assert (kept.truncated, kept.dropped, kept.prompt_only, len(kept.examples)) == (1, 0, 1, 1)
    head = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    for cutoff, prompt_only in (
        (first_reply + head, 1),
        (first_reply + head + 1, 0),
    ):  # its reply's first token
        assert tokenized(tokenizer, path, cutoff_len=cutoff, train_on_inputs=True).prompt_only == prompt_only


BAD_RECORDS = [
    ([{"messages": CONVERSATION}, {"instruction": "a", "output": "b"}],
     "record 1: an instruction record, but record 0 is a chat record: one data file holds one kind"),
    ([{"instruction": "a", "output": "b"}, {"messages": CONVERSATION}],
     "record 1: a chat record, but record 0 is an instruction record: one data file holds one kind"),
    ([{"messages": [{"role": "tool", "content": "x"}]}],
     "record 0: messages\\[0\\]: role 'tool' is not one of system, user, assistant"),
    ([{"conversations": [{"from": "human", "value": 3}]}], "record 0: conversations\\[0\\]: value must be a string, got int"),
    ([{"messages": CONVERSATION[:2]}], "record 0: no assistant turn: nothing to learn from"),
    ([{"messages": [*CONVERSATION[1:3], CONVERSATION[0]]}], "record 0: a system turn may only come first"),
    ([{"messages": CONVERSATION, "instruction": "a", "output": "b"}],
     "record 0: has both 'messages' and instruction/output: a record is one or the other"),
    ([{"messages": []}], "record 0: field 'messages' must be a non-empty list of turns"),
]  # fmt: skip


@pytest.mark.parametrize(("records", "message"), BAD_RECORDS)
def test_bad_chat_records_are_one_line_naming_the_record(tmp_path, records, message):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(records))
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        load_record_dataset(str(path))


def test_a_jsonl_file_names_the_line_of_the_odd_record(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 2 + [{"instruction": "a", "output": "b"}]
    )
    with pytest.raises(
        InputError, match="chat.jsonl: line 3: an instruction record, but line 1 is a chat record"
    ):
        load_record_dataset(path)


def test_a_conversation_the_template_refuses_is_named(tmp_path):
    tokenizer = add_chat_template(build_tokenizer())
    tokenizer.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION}])
    with pytest.raises(InputError, match=r"chat.jsonl: record 1: the chat template refuses this conversation "
                                         r"\(.*roles must alternate user/assistant\)"):  # fmt: skip
        tokenized(tokenizer, path)


def test_a_template_that_rewrites_earlier_turns_cannot_mask_and_says_what_to_do():
    tokenizer = add_chat_template(build_tokenizer())
    # The last turn is written differently from the same turn followed by more (as some reasoning templates do).
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}<END>{% endif %}{% endfor %}"
    )
    with pytest.raises(InputError, match="record 4: the chat template does not write this conversation turn by "
                                         "turn.*--train_on_inputs True trains on every token"):  # fmt: skip
        render(tokenizer, CONVERSATION, "chat.jsonl: record 4", spans=True)
    text, spans = render(tokenizer, CONVERSATION, "chat.jsonl: record 4", spans=False)
    assert (text, spans) == ("".join(turn["content"] for turn in CONVERSATION) + "<END>", [])
