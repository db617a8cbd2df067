"""The results files of `sibo evaluate`: torn lines, rank shards merged and rescored, summary.json."""

import json

import pytest
from fault_checks import write_benchmark

from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.eval.results import (
    DatasetResult,
    as_line,
    consolidate,
    earlier_results,
    read_records,
    scored_datasets,
)
from sibo.eval.runner import evaluate, run_record
from sibo.eval.tasks import Example, resolve_datasets
from sibo.output_dir import RUN_MARKER
from sibo.testing import build_tiny_model, build_tokenizer

ADDSUB = resolve_datasets("AddSub")[0]
EXAMPLES = [Example(i, f"What is {i} + 1?", "", f"{i + 1}.0") for i in range(4)]


def record(index: int, output: str) -> dict:
    return {"index": index, "instruction": EXAMPLES[index].instruction, "output": output}


def test_read_records_skips_torn_lines_and_keeps_the_first_of_each_index(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    cut_in_a_character = as_line(record(2, "é")).encode()[:-4]  # "é" is two bytes: cut between them
    path.write_bytes(
        as_line(record(0, "1")).encode()
        + as_line(record(0, "a later copy")).encode()
        + b"[1, 2]\n"
        + cut_in_a_character
        + b"\n"
        + as_line(record(1, "2")).encode()
        + b'{"index": 3, "instruction": "What'  # the kill tore the last line
    )
    assert read_records(path) == {0: record(0, "1"), 1: record(1, "2")}
    assert read_records(tmp_path / "missing.jsonl") == {}


def test_consolidate_merges_rank_shards_rescores_and_rewrites_in_index_order(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    path.write_text(as_line(record(3, "The answer is 4")) + as_line(record(0, "so 7")))
    (tmp_path / "AddSub.rank1.jsonl").write_text(as_line(record(1, "2")) + as_line(record(0, "1")))

    records = consolidate(path, ADDSUB, EXAMPLES, "careful")

    assert list(records) == [0, 1, 3]
    assert [(r["prediction"], r["correct"]) for r in records.values()] == [
        (7.0, False),
        (2.0, True),
        (4.0, True),
    ]
    assert path.read_text() == "".join(map(as_line, records.values()))
    assert not (tmp_path / "AddSub.rank1.jsonl").exists()
    assert consolidate(tmp_path / "none.jsonl", ADDSUB, EXAMPLES, "careful") == {}


def test_consolidate_refuses_results_for_other_questions(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    path.write_text(as_line({**record(1, "2"), "instruction": "What is 9 + 9?"}))
    with pytest.raises(
        InputError, match=r"AddSub.jsonl holds results for other data \(record 1 does not match"
    ):
        consolidate(path, ADDSUB, EXAMPLES, "careful")
    assert json.loads(path.read_text())["instruction"] == "What is 9 + 9?"  # left as it was


def test_scored_datasets_of_a_missing_a_damaged_and_a_whole_summary(tmp_path):
    summary = tmp_path / "summary.json"
    assert scored_datasets(summary) == {}
    summary.write_text('{"datasets": {"AddSub": {"n": 4')
    assert scored_datasets(summary) is None
    summary.write_text('{"datasets": [1]}')
    assert scored_datasets(summary) is None
    summary.write_text('{"datasets": {"AddSub": {"n": 4, "correct": 3}}}')
    assert scored_datasets(summary) == {"AddSub": {"n": 4, "correct": 3}}


def scripted(model, tokenizer, prompts, settings=None, template=None, **kwargs):
    return ["The answer is 3"] * len(prompts)


def test_a_torn_multibyte_tail_a_damaged_summary_and_an_empty_run_json_do_not_block_a_rerun(
    tmp_path, monkeypatch
):
    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    data_dir = write_benchmark(tmp_path / "bench", [
        {"instruction": f"Add {a} and 2.", "input": "", "answer": str(a + 2)} for a in range(3)
    ])  # fmt: skip
    monkeypatch.setattr("sibo.decode.batch.generate_batch", scripted)
    out = tmp_path / "out"
    config = EvalConfig("AddSub", data_dir, out, decoding=DecodingSettings(batch_size=1, num_beams=1))
    evaluate(model, tokenizer, config)
    results = out / "AddSub.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    # the last record torn inside a multi-byte character, summary.json and run.json damaged (the old
    # code wrote them in place: a full disk left them empty)
    results.write_bytes(b"".join(lines[:2]) + '{"index": 2, "output": "é'.encode()[:-1])
    (out / "summary.json").write_text('{"datasets": ')
    (out / RUN_MARKER).unlink()
    (out / "run.json").write_text("")
    assert evaluate(model, tokenizer, config)["AddSub"].n == 3
    assert json.loads((out / "summary.json").read_text())["datasets"]["AddSub"]["n"] == 3


def test_each_dataset_keeps_the_extraction_that_read_it_and_only_that_one_is_reused(tmp_path, monkeypatch):
    """AddSub scored with legacy, then SingleEq with careful in the same folder: AddSub's numbers are
    legacy's still, and a careful scoring of AddSub must not take them for its own."""
    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    records = [{"instruction": f"Add {a} and 2.", "input": "", "answer": str(a + 2)} for a in range(3)]
    data_dir = write_benchmark(tmp_path / "bench", records)
    (data_dir / "SingleEq").mkdir()
    (data_dir / "SingleEq" / "test.json").write_text(json.dumps(records))
    # careful reads the 3 after "answer is" (right for a = 1), legacy the last number, 99 (never right)
    monkeypatch.setattr(
        "sibo.decode.batch.generate_batch",
        lambda model, tokenizer, prompts, **_: ["The answer is 3. Next, 99"] * len(prompts),
    )
    out = tmp_path / "out"
    decoding = DecodingSettings(batch_size=1, num_beams=1)
    legacy = EvalConfig("AddSub", data_dir, out, "legacy", decoding=decoding)
    careful = EvalConfig("SingleEq", data_dir, out, "careful", decoding=decoding)
    evaluate(model, tokenizer, legacy)
    evaluate(model, tokenizer, careful)
    summary = json.loads((out / "summary.json").read_text())
    assert {name: (d["correct"], d["extraction"]) for name, d in summary["datasets"].items()} == {
        "AddSub": (0, "legacy"), "SingleEq": (1, "careful"),
    }  # fmt: skip
    run = run_record(careful, None)
    assert earlier_results(careful, run, {"AddSub": 3}) is None
    assert earlier_results(careful, run, {"SingleEq": 3}) == {"SingleEq": DatasetResult(3, 1)}
    assert earlier_results(legacy, run, {"AddSub": 3}) == {"AddSub": DatasetResult(3, 0)}
    del summary["datasets"]["SingleEq"]["extraction"]  # written before datasets recorded theirs
    (out / "summary.json").write_text(json.dumps(summary))
    assert earlier_results(careful, run, {"SingleEq": 3}) is None


def test_the_printed_table_says_its_mean_is_of_the_datasets_accuracies():
    from sibo.cli.evaluate import format_table

    table = format_table({"AddSub": DatasetResult(n=4, correct=1), "gsm8k": DatasetResult(n=1, correct=1)})
    assert (
        table.splitlines()[-1]
        == f"{'mean':<14} {'':>6} {'':>8} {0.625:>9.4f}   (of the 2 datasets' accuracies)"
    )
