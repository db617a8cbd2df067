"""Any data file: JSONL, CSV, Parquet and save_to_disk folders give the JSON list's tokenized examples;
--data_columns maps other column names; every bad file is one line naming the file and the record."""

from __future__ import annotations

import csv
import json

import datasets
import pytest
from fault_checks import finetune_args, refused

from sibo.cli import main as sibo_main
from sibo.data import read_records_file, split_validation, tokenize_dataset, tokenize_records
from sibo.data_sources import load_record_dataset, load_sources, parse_columns
from sibo.errors import InputError
from sibo.prompts import build_prompt
from sibo.testing import build_tiny_model, build_tokenizer

RECORDS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5."},
    {"instruction": "Name the colour.", "input": "The sky on a clear day", "output": "Blue."},
    {"instruction": "Count the legs of two cats, then say it twice.", "input": "", "output": "8, 8"},
    {"instruction": 'Quote this: "a, b"', "input": "line one\nline two", "output": '"a, b"'},
]
# The same records under other column names, with an extra column sibo does not read.
RENAMED = [{"question": r["instruction"], "context": r["input"], "answer": r["output"], "id": i}
           for i, r in enumerate(RECORDS)]  # fmt: skip
COLUMNS = "instruction=question,input=context,output=answer"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [build_prompt(r["instruction"], r["input"]) + r["output"] for r in RECORDS]
    return build_tokenizer(corpus, vocab_size=320)


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=1))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_saved(path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_saved_dict(path, rows):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


WRITERS = {"d.json": write_json, "d.jsonl": write_jsonl, "d.csv": write_csv, "d.parquet": write_parquet, "saved": write_saved,
           "saved_dict": write_saved_dict}  # fmt: skip


def examples_of(tokenized) -> list[dict]:
    return [{"input_ids": list(e["input_ids"]), "labels": list(e["labels"])} for e in tokenized.examples]


@pytest.mark.parametrize("train_on_inputs", [True, False])
def test_json_list_tokenizes_as_before_through_datasets(tmp_path, tokenizer, train_on_inputs):
    path = write_json(tmp_path / "d.json", RECORDS)
    # cutoff 80 cuts three records; without the prompts' labels, two of them have nothing left to learn
    for cutoff in (512, 80):
        want = tokenize_records(read_records_file(path), tokenizer, cutoff, train_on_inputs)
        got = tokenize_dataset(load_record_dataset(str(path)), tokenizer, cutoff, train_on_inputs)
        assert examples_of(got) == want.examples
        assert (got.truncated, got.dropped) == (want.truncated, want.dropped)
        assert got.examples["length"] == [len(e["input_ids"]) for e in want.examples]
    assert (want.truncated, want.dropped) == (3, 0 if train_on_inputs else 2)


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_gives_the_json_lists_examples(tmp_path, tokenizer, name):
    want = tokenize_records(
        read_records_file(write_json(tmp_path / "d.json", RECORDS)), tokenizer, 512, False
    )
    path = WRITERS[name](tmp_path / name, RECORDS)
    got = tokenize_dataset(load_record_dataset(str(path)), tokenizer, 512, False)
    assert examples_of(got) == want.examples


@pytest.mark.parametrize("name", list(WRITERS))
def test_data_columns_map_other_names(tmp_path, tokenizer, name):
    want = tokenize_records(read_records_file(write_json(tmp_path / "d.json", RECORDS)), tokenizer, 512, True)
    path = WRITERS[name](tmp_path / name, RENAMED)
    dataset = load_record_dataset(str(path), parse_columns(COLUMNS))
    assert dataset.column_names == ["instruction", "input", "output"]
    assert examples_of(tokenize_dataset(dataset, tokenizer, 512, True)) == want.examples


def test_a_mapped_column_replaces_one_of_our_name(tmp_path):
    rows = [{"instruction": "ignored", "prompt": "Add 1 and 1.", "output": "2"}]
    dataset = load_record_dataset(str(write_csv(tmp_path / "d.csv", rows)), {"instruction": "prompt"})
    assert dataset[:] == {"instruction": ["Add 1 and 1."], "input": [""], "output": ["2"]}


@pytest.mark.parametrize(
    "text",
    [",instruction,output\n0,Add 2 and 3.,5\n",  # pandas' to_csv index: an empty column name
     "instruction,output,output\nAdd 2 and 3.,5,6\n",  # a repeated name: the first is the column
     "\n\ninstruction,output\nAdd 2 and 3.,5\n"],  # blank lines before the header
)  # fmt: skip
def test_csv_headers_pandas_reads_load_as_before(tmp_path, text):
    (tmp_path / "d.csv").write_text(text)
    dataset = load_record_dataset(str(tmp_path / "d.csv"))
    assert dataset["output"] == ["5"]


def test_csv_cells_are_their_text(tmp_path):
    texts = ["007", "1.50", "None", "NA", "true", "nan"]
    rows = [{"instruction": f"Say {text}.", "input": text, "output": text} for text in texts]
    dataset = load_record_dataset(str(write_csv(tmp_path / "d.csv", rows)))
    assert dataset["output"] == texts and dataset["input"] == texts


def test_validation_split_of_a_dataset_is_the_lists(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    dataset = load_record_dataset(str(write_parquet(tmp_path / "d.parquet", rows)))
    train, val = split_validation(dataset, 5)
    want_train, want_val = split_validation(read_records_file(write_json(tmp_path / "d.json", rows)), 5)
    assert train["instruction"] == [r.instruction for r in want_train]
    assert val["instruction"] == [r.instruction for r in want_val]
    assert len(split_validation(dataset, 0)[1]) == 0


def test_a_saved_folder_is_left_as_it_was(tmp_path, tokenizer):
    folder = write_saved(tmp_path / "saved", RECORDS)
    before = sorted(p.name for p in folder.iterdir())
    tokenize_dataset(load_record_dataset(str(folder)), tokenizer, 512)
    assert sorted(p.name for p in folder.iterdir()) == before


BAD = [
    ("d.txt", lambda p: p.write_text("hello"), None,
     r"d\.txt: unknown data file type '\.txt': expected \.json or \.jsonl \(records\), \.csv, \.parquet"),
    ("d.csv", lambda p: write_csv(p, RENAMED), "instruction=question,output=reply",
     r"d\.csv: no column 'reply' for --data_columns output=reply; columns: question, context, answer, id"),
    ("d.csv", lambda p: write_csv(p, RENAMED), None,
     r"d\.csv: no column 'instruction' \(columns: question, context, answer, id\); name the column that "
     r"holds it with --data_columns instruction=COLUMN"),
    ("d.csv", lambda p: write_csv(p, [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]),
     None, r"d\.csv: record 1: missing field 'output'"),
    ("d.csv", lambda p: p.write_text('instruction,output\na,b\nc,d,e,f\n'), None, r"d\.csv: not a readable csv file"),
    ("d.parquet", lambda p: p.write_bytes(b"PAR1 not really"), None, r"d\.parquet: not a readable parquet file"),
    ("d.parquet", lambda p: write_parquet(p, [{"instruction": "a", "output": 3}]), None,
     r"d\.parquet: record 0: field 'output' must be a string, got int"),
    ("d.jsonl", lambda p: p.write_text(json.dumps(RECORDS[0]) + '\n{"instruction": "x", "output": 4}\n'), None,
     r"d\.jsonl: line 2: field 'output' must be a string, got int"),
    ("folder", lambda p: p.mkdir(), None,
     r"folder is a folder, but not one written by datasets' save_to_disk \(it has no state\.json or "
     r"dataset_dict\.json\)"),
    ("split", lambda p: datasets.DatasetDict({"test": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(p)),
     None, r"split: no 'train' split \(splits: test\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "make", "columns", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_data_is_one_line_naming_the_file_and_record(tmp_path, name, make, columns, message):
    make(tmp_path / name)
    with pytest.raises(InputError, match=message) as caught:
        load_record_dataset(str(tmp_path / name), parse_columns(columns or ""))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["instruction", "prompt=question", "output="])
def test_bad_data_columns_spelling(text):
    with pytest.raises(InputError, match=rf"--data_columns {text!r}: expected FIELD=COLUMN pairs"):
        parse_columns(text)


def test_finetune_reads_a_renamed_csv_and_a_bad_mapping_is_exit_2(tmp_path, capsys):
    tokenizer = build_tokenizer()
    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = write_csv(tmp_path / "d.csv", RENAMED)
    flags = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(data), "--val_set_size", "0",
             "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "1", "--target_modules", "q_proj,up_proj"]  # fmt: skip
    assert sibo_main([*flags, "--output_dir", str(tmp_path / "bad"), "--data_columns", "output=reply"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"sibo finetune: error: {data}: no column 'reply' for --data_columns output=reply")
    )
    assert not (tmp_path / "bad").exists()
    assert sibo_main([*flags, "--output_dir", str(tmp_path / "ok"), "--data_columns", COLUMNS]) == 0
    run = json.loads((tmp_path / "ok" / "run_config.json").read_text())
    assert run["config"]["data_columns"] == COLUMNS and run["resolved"]["train_examples"] == len(RECORDS)


def test_a_hub_name_is_loaded_by_datasets_train_split(monkeypatch, tokenizer):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(RENAMED)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    # the Hub is out of reach here: as with HF_HUB_OFFLINE=1, the cache (datasets' loader) answers
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    dataset = load_record_dataset("someone/math", parse_columns(COLUMNS))
    assert calls == [("someone/math", "train")]
    assert dataset[:] == {name: [r[name] for r in RECORDS] for name in ("instruction", "input", "output")}


def test_a_folder_as_data_path_and_a_bom_are_named_for_what_they_are(root, tmp_path, capsys):
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--data_path") + 1] = tmp_path
    line = refused(capsys, argv, tmp_path)
    assert line == (
        f"sibo finetune: error: {tmp_path} is a folder, but not one written by datasets' save_to_disk "
        "(it has no state.json or dataset_dict.json)"
    )
    from sibo.data import read_records_file

    (tmp_path / "bom.json").write_text("\ufeff" + (root / "records.json").read_text())
    assert len(read_records_file(tmp_path / "bom.json")) == 8


# ---------------------------------------------------------------- several sources


def numbered(prefix: str, count: int) -> list[dict]:
    return [{"instruction": f"{prefix} {i}", "input": "", "output": str(i)} for i in range(count)]


def source_counts(dataset) -> dict[str, int]:
    prefixes = [instruction.split()[0] for instruction in dataset["instruction"]]
    return {prefix: prefixes.count(prefix) for prefix in sorted(set(prefixes))}


def test_two_sources_mixed_by_ratio_give_the_seeded_counts(tmp_path):
    a = write_json(tmp_path / "a.json", numbered("a", 3000))
    b = tmp_path / "b.jsonl"
    b.write_text(
        "\n".join(json.dumps({"q": r["instruction"], "a": r["output"]}) for r in numbered("b", 3000))
    )
    sources = f"{a},{b}"
    columns = ";instruction=q,output=a"  # the first source's own names, the second's mapped
    mixed = load_sources(sources, columns, "0.75,0.25", seed=0)
    counts = source_counts(mixed)
    # interleave until the first source runs out: all 3000 of a, and b at a third of that (σ ≈ 37)
    assert counts["a"] == 3000
    assert abs(counts["b"] - 1000) <= 100
    assert load_sources(sources, columns, "3,1", seed=0)["instruction"] == mixed["instruction"]  # normalised
    reseeded = load_sources(sources, columns, "0.75,0.25", seed=1)
    assert reseeded["instruction"] != mixed["instruction"]
    assert source_counts(load_sources(sources, columns, "0.25,0.75", seed=0))["b"] == 3000
    # b's thousand are drawn from the whole file, not its first thousand records (a file sorted by topic)
    drawn = [int(text.split()[1]) for text in mixed["instruction"] if text.startswith("b ")]
    assert max(drawn) >= 2500 and min(drawn) < 500
    concatenated = load_sources(sources, columns)
    assert source_counts(concatenated) == {"a": 3000, "b": 3000}
    assert concatenated["instruction"][:2] == ["a 0", "a 1"]


@pytest.mark.parametrize(
    ("ratios", "columns", "message"),
    [
        ("0.5", "", "--data_ratios gives 1 ratios for 2 data sources"),
        ("0.5,x", "", "--data_ratios '0.5,x': expected numbers"),
        ("0.5,0", "", "--data_ratios must be positive finite numbers"),
        ("", "output=a;output=b;output=c", r"--data_columns gives 3 mappings \(separated by ';'\) for 2 data sources"),
    ],
)  # fmt: skip
def test_bad_mixes_are_one_line(tmp_path, ratios, columns, message):
    a = write_json(tmp_path / "a.json", RECORDS)
    with pytest.raises(InputError, match=message):
        load_sources(f"{a},{a}", columns, ratios)


def test_one_kind_of_record_per_run(tmp_path):
    a = write_json(tmp_path / "a.json", RECORDS)
    chat = write_json(tmp_path / "chat.json", [{"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "hello"}]}])  # fmt: skip
    with pytest.raises(InputError, match=r"chat.json: chat records, but .*a.json holds instruction records"):
        load_sources(f"{a},{chat}")
    with pytest.raises(InputError, match="--data_ratios mixes several --data_path sources"):
        load_sources(str(a), "", "1")
