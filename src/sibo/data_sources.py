"""Any data a user brings, as one `datasets.Dataset` of checked rows: {instruction, input, output},
or for chat records {messages, record} (`sibo.chat`; record: the row's number in the file).

    --data_path math.json | math.jsonl | math.csv | math.parquet | a save_to_disk folder | a hub name
    --data_columns instruction=question,output=answer      (other column names mapped onto ours)
    --data_columns messages=dialogue                       (the column that holds the conversations)

JSONL, CSV and Parquet go through `datasets`' own loaders, so a large file is read into an
Arrow table on disk and checked and tokenized with `Dataset.map`, never copied into Python
lists. A JSON list is parsed by `sibo.data.read_records_file` (it has to be read whole anyway),
which also names the line of a bad JSONL record. Every problem is one `InputError` naming the
file and the record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from sibo.chat import CHAT_FIELDS, Conversation
from sibo.data import check_one_kind, datasets_bars, map_rows, read_records_file, validate_record
from sibo.errors import InputError, first_line
from sibo.hub import require_hub

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
COLUMN_FIELDS = (*FIELDS, "messages")  # what --data_columns may map
# file suffix -> the `datasets` loader that reads it
LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# What marks a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
SAVED_MARKERS = ("state.json", "dataset_dict.json")
LARGE_FILE_BYTES = 50 * 2**20  # datasets' bar while it converts a file to Arrow shows from this size up


def parse_columns(text: str) -> dict[str, str]:
    """'instruction=question,output=answer' -> {'instruction': 'question', 'output': 'answer'}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, _, theirs = (side.strip() for side in item.partition("="))
        if ours not in COLUMN_FIELDS or not theirs:
            raise InputError(
                f"--data_columns {text!r}: expected FIELD=COLUMN pairs with FIELD one of "
                f"{', '.join(COLUMN_FIELDS)}, got {item!r}"
            )
        mapping[ours] = theirs
    return mapping


def load_record_dataset(data_path: str, columns: Mapping[str, str] | None = None):
    """Checked rows of a local file or folder, or of a hub dataset's train split: instruction rows, or
    chat rows when the data has a messages or conversations column.

    `columns` maps our field names to the data's column names ({'instruction': 'question'}).
    """
    path = Path(data_path)
    if path.is_dir():
        dataset = _load_saved(path)
    elif path.is_file():
        dataset = _load_file(path, bool(columns))
    elif path.suffix in LOADERS or data_path.startswith((".", "/", "~")):
        raise InputError(f"data file {data_path} does not exist")
    else:
        dataset = _load_hub(data_path)
    try:
        dataset = _checked(_select_columns(dataset, columns or {}, data_path), data_path)
    except InputError:
        if not (path.is_file() and LOADERS.get(path.suffix) == "json") or columns:
            raise
        # Name the line, not the row: the JSONL reader reports the first bad line of the file.
        read_records_file(path)
        raise
    if len(dataset) == 0:
        raise InputError(f"{data_path}: zero usable records")
    return dataset


def _load_file(path: Path, mapped: bool = False):
    """The file as a Dataset. A JSON list of our own fields is read and checked record by record (an error
    names the record); with --data_columns (`mapped`) its fields are other names, so datasets reads it."""
    import datasets

    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise InputError(
            f"{path}: unknown data file type {path.suffix!r}: expected .json or .jsonl (records), .csv, "
            ".parquet, a datasets.save_to_disk folder, or a hub dataset name"
        )
    if loader == "json" and not mapped and _first_character(path) == "[":
        return _from_records(read_records_file(path))
    if loader in ("json", "csv"):
        check_utf8(path)  # arrow would fail later, on the first row it decodes, with no file named
    try:
        with datasets_bars(path.stat().st_size >= LARGE_FILE_BYTES):
            dataset = datasets.load_dataset(
                loader, data_files=str(path), split="train", **_as_text(path, loader)
            )
    except Exception as error:  # noqa: BLE001 - arrow, pandas and json parsers raise their own types
        if loader == "json" and not mapped:
            # Not JSONL the loader can read: the JSON reader says what is wrong, and where.
            return _from_records(read_records_file(path))
        reason = first_line(error.__cause__ or error)
        raise InputError(f"{path}: not a readable {loader} file ({reason})") from None
    return dataset


def _as_text(path: Path, loader: str) -> dict:
    """A CSV cell is the text the file holds ("007", "1.50", "NA", "None" as written): every column read as a
    string, and only an empty cell missing (pandas would otherwise guess numbers and missing values first)."""
    if loader != "csv":
        return {}
    import datasets
    import pandas

    # the columns named as datasets' reader names them ("Unnamed: 0" for an empty name, "a.1" for a repeat)
    header = pandas.read_csv(path, nrows=0).columns
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "na_values": [""]}


def check_utf8(path: Path) -> None:
    """A text data file must be UTF-8 throughout: the first bad byte is one line naming its line and byte."""
    import codecs

    decoder, line, offset = codecs.getincrementaldecoder("utf-8")(), 1, 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line += chunk[: error.start].count(b"\n")
                raise InputError(
                    f"{path}: not UTF-8 text ({error.reason} at byte {offset + error.start}, line {line})"
                ) from None
            line += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text ({error.reason} at its end)") from None


def _load_saved(path: Path):
    import datasets

    if not any((path / marker).is_file() for marker in SAVED_MARKERS):
        raise InputError(
            f"{path} is a folder, but not one written by datasets' save_to_disk (it has no "
            f"{' or '.join(SAVED_MARKERS)})"
        )
    try:
        with datasets_bars(False):  # memory-mapped: no time to show
            dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged folder fails in arrow or json
        raise InputError(f"{path}: cannot read this save_to_disk folder ({first_line(error)})") from None
    return _train_split(dataset, str(path))


def _load_hub(name: str):
    import datasets

    require_hub(name, "data_path")
    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # noqa: BLE001 - offline, unknown name, gated: all one message
        raise InputError(
            f"data_path {name}: not a local file, and no hub dataset of that name could be loaded "
            f"({first_line(error)})"
        ) from None
    return dataset


def _train_split(dataset, where: str):
    import datasets

    if not isinstance(dataset, datasets.DatasetDict):
        return dataset
    if "train" not in dataset:
        raise InputError(f"{where}: no 'train' split (splits: {', '.join(dataset)})")
    return dataset["train"]


def _select_columns(dataset, columns: Mapping[str, str], where: str):
    """Only the fields we read (a chat column, or our three), renamed from the data's columns where
    `columns` says so."""
    for ours, theirs in columns.items():
        if theirs not in dataset.column_names:
            raise InputError(
                f"{where}: no column {theirs!r} for --data_columns {ours}={theirs}; "
                f"columns: {', '.join(dataset.column_names)}"
            )
    mapped = {theirs: ours for ours, theirs in columns.items()}
    # the column --data_columns names, else any of ours (a file may hold messages and ShareGPT records)
    chat_columns = (
        [columns["messages"]]
        if "messages" in columns
        else [name for name in dataset.column_names if name in CHAT_FIELDS]
    )
    if not chat_columns:
        for name in ("instruction", "output"):
            if name not in columns and name not in dataset.column_names:
                raise InputError(
                    f"{where}: no column {name!r} (columns: {', '.join(dataset.column_names) or 'none'}); "
                    f"name the column that holds it with --data_columns {name}=COLUMN, or give chat records "
                    "(messages or conversations)"
                )
    # A column of our name that another column replaces is dropped, as is everything we do not read.
    kept = [
        name
        for name in dataset.column_names
        if name in mapped or name in chat_columns or (name in FIELDS and name not in columns)
    ]
    dataset = dataset.select_columns(kept)
    return dataset.rename_columns({theirs: ours for theirs, ours in mapped.items() if theirs != ours})


def _checked(dataset, where: str):
    """Each row through `validate_record` (an empty input is ''), in batches: 'file: record 3' on error.
    A chat row becomes {messages, record}; one kind per file, the first row's."""
    chat_rows = bool(set(CHAT_FIELDS) & set(dataset.column_names))
    first_is_chat = (
        chat_rows
        and len(dataset) > 0
        and any(dataset[0][name] is not None for name in CHAT_FIELDS if name in dataset.column_names)
    )
    names = ("messages", "record") if first_is_chat else FIELDS

    def check(batch: dict, indices: list[int]) -> dict[str, list]:
        rows = []
        for offset, index in enumerate(indices):
            # A null cell (an empty CSV field, a key absent from some JSONL lines) is a missing field.
            raw = {name: batch[name][offset] for name in batch if batch[name][offset] is not None}
            record = validate_record(raw, f"{where}: record {index}")
            check_one_kind(
                [first_is_chat, isinstance(record, Conversation)],
                [f"{where}: record 0", f"{where}: record {index}"],
            )
            rows.append({"messages": record.messages, "record": index} if first_is_chat else asdict(record))
        return {name: [row[name] for row in rows] for name in names}

    return map_rows(dataset, check, with_indices=True, remove_columns=dataset.column_names, desc="checking")


def _from_records(records):
    import datasets

    if records and isinstance(records[0], Conversation):
        return datasets.Dataset.from_list(
            [{"messages": record.messages, "record": index} for index, record in enumerate(records)]
        )
    return datasets.Dataset.from_list([asdict(record) for record in records])


def _first_character(path: Path) -> str:
    """The file's first non-blank character (a BOM skipped), read without loading the file."""
    with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip()[0]
    return ""


# ---------------------------------------------------------------- several sources

SOURCE_SEPARATOR = ","  # --data_path a.json,b.jsonl,hub/name
COLUMNS_SEPARATOR = ";"  # --data_columns for each source: "instruction=q,output=a;;output=answer"


def split_sources(
    data_path: str, data_columns: str = "", data_ratios: str = ""
) -> list[tuple[str, dict, float | None]]:
    """(path, columns, ratio) per source of `--data_path a,b --data_columns ca;cb --data_ratios 0.7,0.3`;
    one --data_columns mapping (no ';') applies to every source. Ratios are normalised to sum to 1."""
    paths = [part.strip() for part in data_path.split(SOURCE_SEPARATOR) if part.strip()]
    columns = data_columns.split(COLUMNS_SEPARATOR) if COLUMNS_SEPARATOR in data_columns else [data_columns]
    if len(columns) == 1:
        columns = columns * len(paths)
    if len(columns) != len(paths):
        raise InputError(
            f"--data_columns gives {len(columns)} mappings (separated by ';') for {len(paths)} data sources"
        )
    ratios = _ratios(data_ratios, len(paths)) if data_ratios.strip() else [None] * len(paths)
    return [
        (path, parse_columns(mapping), ratio)
        for path, mapping, ratio in zip(paths, columns, ratios, strict=True)
    ]


def _ratios(text: str, sources: int) -> list[float]:
    try:
        ratios = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--data_ratios {text!r}: expected numbers, e.g. 0.7,0.3") from None
    if sources < 2:
        raise InputError("--data_ratios mixes several --data_path sources (a,b,…); there is one")
    if len(ratios) != sources:
        raise InputError(f"--data_ratios gives {len(ratios)} ratios for {sources} data sources")
    if not all(0 < ratio < float("inf") for ratio in ratios):
        raise InputError(f"--data_ratios must be positive finite numbers, got {text}")
    return [ratio / sum(ratios) for ratio in ratios]


def load_sources(data_path: str, data_columns: str = "", data_ratios: str = "", seed: int = 42):
    """The records of one or several sources as one Dataset: concatenated, or — with ratios — interleaved
    by datasets' `interleave_datasets`, sampling each source with its ratio (seeded) until the first runs
    out, each source shuffled first (seeded) so that a file sorted by topic gives a sample of all of it,
    not its head. Every source must hold the same kind of record (instruction or chat)."""
    sources = split_sources(data_path, data_columns, data_ratios)
    loaded = [load_record_dataset(path, columns) for path, columns, _ in sources]
    if len(loaded) == 1:
        return loaded[0]
    import datasets

    kinds = ["chat" if "messages" in dataset.column_names else "instruction" for dataset in loaded]
    for (path, _, _), kind in zip(sources, kinds, strict=True):
        if kind != kinds[0]:
            raise InputError(
                f"{path}: {kind} records, but {sources[0][0]} holds {kinds[0]} records: one kind of record per run"
            )
    if sources[0][2] is None:
        mixed = datasets.concatenate_datasets(loaded)
        logger.info(
            "concatenated %d sources: %s records", len(loaded), " + ".join(str(len(d)) for d in loaded)
        )
        return mixed
    tagged = [
        dataset.add_column("source", [index] * len(dataset)).shuffle(seed=seed + index)
        for index, dataset in enumerate(loaded)
    ]
    mixed = datasets.interleave_datasets(
        tagged,
        probabilities=[ratio for _, _, ratio in sources],
        seed=seed,
        stopping_strategy="first_exhausted",
    )
    counts = [mixed["source"].count(index) for index in range(len(sources))]
    logger.info(
        "mixed %d sources by ratio (seed %d): %s",
        len(sources),
        seed,
        ", ".join(
            f"{path} {count} of {len(d)}"
            for (path, _, _), count, d in zip(sources, counts, loaded, strict=True)
        ),
    )
    return mixed.remove_columns("source")
