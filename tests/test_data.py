"""Records, their validation, tokenisation with prompt masking, and the padded collator."""

from __future__ import annotations

import json

import pytest
from fault_checks import finetune_args, refused

from sibo.data import (
    IGNORE_INDEX,
    PaddedCollator,
    Record,
    build_example,
    read_records_file,
    split_validation,
    tokenize_records,
    warn_of_empty_responses,
    warn_of_special_token_text,
)
from sibo.data_sources import load_record_dataset
from sibo.errors import InputError
from sibo.prompts import build_prompt
from sibo.testing import build_tokenizer

RECORDS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5."},
    {"instruction": "Name the colour.", "input": "The sky on a clear day", "output": "Blue."},
    {"instruction": "Count the legs of two cats.", "output": "Each cat has 4 legs, so 2 * 4 = 8."},
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [build_prompt(r["instruction"], r.get("input")) + r["output"] for r in RECORDS]
    return build_tokenizer(corpus, vocab_size=320)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- reading


def test_json_list_and_jsonl_give_the_same_records(tmp_path):
    from_list = read_records_file(write(tmp_path, "d.json", json.dumps(RECORDS, indent=2)))
    from_lines = read_records_file(write(tmp_path, "d.jsonl", "\n".join(map(json.dumps, RECORDS)) + "\n\n"))
    assert from_list == from_lines
    assert from_list[1] == Record("Name the colour.", "The sky on a clear day", "Blue.")
    assert from_list[2].input == ""  # a missing input is an empty one


def test_extra_fields_are_ignored_and_null_input_is_empty(tmp_path):
    raw = [{"instruction": "Q", "input": None, "output": "A", "answer": "4.0"}]
    assert read_records_file(write(tmp_path, "d.json", json.dumps(raw))) == [Record("Q", "", "A")]


BAD_FILES = [
    ("d.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]',
     r"d\.json: malformed JSON at line 3, column 23: Expecting ',' delimiter"),
    ("d.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', r"d\.jsonl: malformed JSON at line 2"),
    ("d.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', r"d\.json: record 1: missing field 'output'"),
    ("d.jsonl", '\n{"output": "b"}\n', r"d\.jsonl: line 2: missing field 'instruction'"),
    ("d.json", '[{"instruction": "a", "output": 5}]', r"record 0: field 'output' must be a string, got int"),
    ("d.json", '[{"instruction": "a", "input": ["x"], "output": "b"}]', r"record 0: field 'input' must be a string, got list"),
    ("d.json", '[{"instruction": "  ", "output": "b"}]', r"record 0: field 'instruction' is empty"),
    ("d.json", '["just text"]', r"record 0: expected an object with instruction/input/output \(or messages\), got str"),
    ("d.json", "[]", r"d\.json: zero usable records"),
    ("d.jsonl", "\n\n", r"d\.jsonl: zero usable records"),
    ("d.json", '"a string"', r"expected a JSON list of records or JSONL"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES)
def test_bad_files_name_the_file_the_place_and_the_problem(tmp_path, name, text, message):
    with pytest.raises(InputError, match=message) as caught:
        load_record_dataset(str(write(tmp_path, name, text)))
    assert "\n" not in str(caught.value)


def test_missing_local_file_is_not_mistaken_for_a_hub_name(tmp_path):
    with pytest.raises(InputError, match=r"data file .*nope\.json does not exist"):
        load_record_dataset(str(tmp_path / "nope.json"))


def test_validation_split_is_seeded_and_disjoint():
    records = [Record(f"q{i}", "", f"a{i}") for i in range(20)]
    train, val = split_validation(records, 5)
    assert len(train) == 15 and len(val) == 5
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(records)
    assert split_validation(records, 5) == (train, val)
    assert split_validation(records, 0) == (records, [])
    with pytest.raises(InputError, match="val_set_size 20 leaves no training records: the data has 20"):
        split_validation(records, 20)


@pytest.mark.parametrize("kind", ["records", "dataset", "chat"])
def test_validation_records_that_copy_training_records_are_counted(kind, caplog):
    import datasets

    records = [Record(f"q{i % 10}", "", f"a{i % 10}") for i in range(20)]  # each record twice
    train, val = split_validation(records, 5)
    copies = sum(record in set(train) for record in val)
    assert copies > 0  # the seeded split holds some: the count is the log's
    caplog.clear()
    chats = [  # as sibo.data_sources keeps them: each row with its own index, which is not its content
        {
            "messages": [
                {"role": "user", "content": r.instruction},
                {"role": "assistant", "content": r.output},
            ],
            "record": i,
        }
        for i, r in enumerate(records)
    ]
    data = {"records": records, "dataset": datasets.Dataset.from_list([vars(r) for r in records]),
            "chat": datasets.Dataset.from_list(chats)}[kind]  # fmt: skip
    with caplog.at_level("WARNING", logger="sibo.data"):
        split_validation(data, 5)
    assert caplog.messages == [
        f"validation: {copies} of its 5 records are copies of training records: eval_loss (and the best checkpoint "
        "chosen by it) flatters the model; deduplicate the data"
    ]
    caplog.clear()
    split_validation([Record(f"q{i}", "", f"a{i}") for i in range(20)], 5)
    assert caplog.messages == []


def test_empty_responses_are_counted_and_said(caplog):
    import datasets

    instructions = datasets.Dataset.from_list(
        [{"instruction": "q", "input": "", "output": text} for text in ("a", "", " ")]
    )
    turn = {"role": "user", "content": "hi"}
    chats = datasets.Dataset.from_list(
        [{"messages": [turn, {"role": "assistant", "content": text}]} for text in ("a", "\n")]
    )
    with caplog.at_level("WARNING", logger="sibo.data"):
        assert (warn_of_empty_responses(instructions), warn_of_empty_responses(chats)) == (2, 1)
    said = "records have an empty response: each teaches the model to answer with nothing (is this a test file, whose answers are elsewhere?)"
    assert caplog.messages == [f"2 of 3 {said}", f"1 of 2 {said}"]


def instruction_rows(texts: list[tuple[str, str, str]]):
    """A datasets.Dataset of instruction records, one per (instruction, input, output)."""
    import datasets

    return datasets.Dataset.from_list(
        [dict(zip(("instruction", "input", "output"), t, strict=True)) for t in texts]
    )


def test_special_token_text_is_counted_and_said(tokenizer, caplog):
    """Text the tokenizer reads as a control token ("</s>" ends the answer there): counted per record, in any
    column or turn, respecting a selection (--data_ratios' shuffle), and named."""
    import datasets

    texts = [
        ("q", "", "a"),
        ("q </s>", "", "a"),
        ("q", "<s>", "a</s>"),
        ("q", "", "a <pad> b"),
        ("<s", "", "/s>"),
    ]
    instructions = instruction_rows(texts)
    user = {"role": "user", "content": "hi"}
    chats = datasets.Dataset.from_list(
        [
            {"messages": [user, {"role": "assistant", "content": text}]}
            for text in ("a", "b </s>", "<unk><unk>")
        ]
        + [{"messages": [{"role": "user", "content": "</s>"}, {"role": "assistant", "content": "</s>"}]}]
    )
    with caplog.at_level("WARNING", logger="sibo.data"):
        assert warn_of_special_token_text(instructions, tokenizer, "training") == 3
        assert warn_of_special_token_text(instructions.select([0, 4, 1]), tokenizer) == 1
        assert warn_of_special_token_text(chats, tokenizer, "validation") == 3
        assert warn_of_special_token_text(instructions.select([0, 4]), tokenizer) == 0
    said = (
        "the tokenizer reads it as that token, not as text (an end-of-text token ends the answer there); rewrite it "
        "where it is meant as text"
    )
    assert caplog.messages == [
        f"3 of 5 training records hold the text of a special token (</s>, <pad>, <s>): {said}",
        f"1 of 3 records hold the text of a special token (</s>): {said}",
        f"3 of 4 validation records hold the text of a special token (</s>, <unk>): {said}",
    ]


# ---------------------------------------------------------------- tokenisation


def test_example_is_the_template_then_the_response_then_eos(tokenizer):
    records = [Record(**{"input": "", **raw}) for raw in RECORDS]
    tokenized = tokenize_records(records, tokenizer, cutoff_len=512, train_on_inputs=True)
    assert (tokenized.truncated, tokenized.dropped) == (0, 0)
    for record, example in zip(records, tokenized.examples, strict=True):
        expected = build_prompt(record.instruction, record.input) + record.output + tokenizer.eos_token
        assert tokenizer.decode(example["input_ids"]) == expected
        assert example["labels"] == example["input_ids"]


def test_train_on_inputs_false_masks_exactly_the_prompt(tokenizer):
    record = Record("Add 2 and 3.", "", "2 + 3 = 5.")
    masked = tokenize_records([record], tokenizer, 512, train_on_inputs=False).examples[0]
    prompt_length = len(tokenizer(build_prompt(record.instruction))["input_ids"])
    assert masked["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert masked["labels"][prompt_length:] == masked["input_ids"][prompt_length:]
    assert tokenizer.decode(masked["labels"][prompt_length:]) == "2 + 3 = 5." + tokenizer.eos_token


def test_long_records_are_cut_and_counted_and_unlearnable_ones_dropped():
    example, was_cut = build_example([1, 2, 3], [4, 5, 6, 2], cutoff_len=5, train_on_inputs=False)
    assert was_cut and example == {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5]}
    assert build_example([1, 2, 3], [4, 2], cutoff_len=3, train_on_inputs=False) == (None, True)
    assert build_example([1, 2, 3], [4, 2], cutoff_len=3, train_on_inputs=True)[0]["labels"] == [1, 2, 3]
    assert build_example([1, 2], [4, 2], cutoff_len=8, train_on_inputs=False)[1] is False


def test_tokenize_records_counts_truncated_and_dropped(tokenizer):
    records = [Record("Add 2 and 3.", "", "2 + 3 = 5. " * 30), Record("Q " * 200, "", "A")]
    tokenized = tokenize_records(records, tokenizer, cutoff_len=60, train_on_inputs=False)
    assert (tokenized.truncated, tokenized.dropped, len(tokenized.examples)) == (2, 1, 1)
    assert len(tokenized.examples[0]["input_ids"]) == 60


# ---------------------------------------------------------------- collators


def test_padded_collator_pads_right_and_ignores_pads():
    batch = PaddedCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert PaddedCollator(0, pad_to_multiple_of=4)([{"input_ids": [1], "labels": [1]}])[
        "input_ids"
    ].shape == (1, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[{"instruction": "a\\udc80", "output": "b"}]',
            "record 0: field 'instruction': not valid text (a lone surrogate '\\udc80' at character 1)",
        ),
        (
            '[{"instruction": "a", "output": ' + "1" * 5000 + "}]",
            "unreadable JSON (Exceeds the limit (4300 digits)",
        ),
        ("[" * 200_000 + "]" * 200_000, "JSON nested too deep to read"),
    ],
    ids=["surrogate", "long-integer", "deep"],
)
def test_finetune_data_faults_are_one_line(root, tmp_path, capsys, text, message):
    data = tmp_path / "data.json"
    data.write_text(text)
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--data_path") + 1] = data
    line = refused(capsys, argv, tmp_path)
    assert line.startswith(f"sibo finetune: error: {data}: {message}"), line


def test_a_response_cut_away_entirely_is_counted_as_prompt_only():
    from sibo.data import Record, tokenize_records

    tokenizer = build_tokenizer()
    records = [Record("Add 1 and 2 " * 20, "", "3"), Record("Add 1 and 2.", "", "3")]
    cutoff = len(tokenizer(build_prompt("Add 1 and 2."))["input_ids"]) + 2  # the short one fits whole
    tokenized = tokenize_records(records, tokenizer, cutoff_len=cutoff, train_on_inputs=True)
    assert (len(tokenized.examples), tokenized.prompt_only, tokenized.dropped) == (2, 1, 0)
    tokenized = tokenize_records(records, tokenizer, cutoff_len=cutoff, train_on_inputs=False)
    assert (len(tokenized.examples), tokenized.prompt_only, tokenized.dropped) == (1, 0, 1)


def test_special_token_text_is_found_in_one_pass_per_column_whatever_its_characters(monkeypatch):
    """Hundreds of special tokens cost one regex pass per column, and their regex characters ("|", ".", "[")
    match themselves only."""
    import pyarrow.compute as pc

    tokenizer = build_tokenizer(vocab_size=300)
    extra = ["<|im_end|>", "[INST]", "a.b", *(f"<extra_{k}>" for k in range(300))]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    texts = [
        ("q", "", "a<|im_end|>"),
        ("[INST]", "", "a"),
        ("q", "", "axb"),
        ("q", "", "im_end|"),
        ("q", "", "a.b"),
    ]
    records = instruction_rows(texts)
    calls = []
    regex = pc.match_substring_regex
    monkeypatch.setattr(
        pc, "match_substring_regex", lambda *args, **kwargs: calls.append(1) or regex(*args, **kwargs)
    )
    assert warn_of_special_token_text(records, tokenizer) == 3
    assert len(calls) == 3  # instruction, input, output
