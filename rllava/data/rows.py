"""Read dataset rows from parquet, json/jsonl, csv, arrow, `save_to_disk` folders, hub names, or local folders
in the hub's layout (a downloaded dataset repo); `NAME@split` picks a split (EasyR1's `hiyouga/geometry3k@train`).

`load_rows("a.parquet,b.jsonl", cfg)` concatenates plain dict rows. Every row keeps where it
came from (`RowRef`) so errors can name the file and row. `datasets` is imported only for
folders and hub names (it is an optional dependency at run time).
"""
from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllava.config import DataConfig


class DataError(ValueError):
    """A problem with the data, naming the file, row and field it is about."""


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: its file, its row number in that file, and the folder relative paths use."""

    file: str
    row: int
    base_dir: Path
    entry: int = 0  # which comma-separated entry of the files setting it came from (data.train_weights)

    def where(self, field: str | None = None) -> str:
        return f"{self.file}, row {self.row}" + (f", field {field!r}" if field else "")


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_arrow(path: Path) -> list[dict]:
    import pyarrow as pa

    try:  # `datasets` writes the IPC stream format; others write the file format
        with pa.ipc.open_stream(path) as reader:
            return reader.read_all().to_pylist()
    except pa.ArrowInvalid:
        with pa.ipc.open_file(path) as reader:
            return reader.read_all().to_pylist()


def _read_csv(path: Path) -> list[dict]:
    """Every field as the text it is: type guessing would turn an answer `007` into 7 and `1e3` into 1000.0."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # Quoted fields may hold line breaks (a multi-line question, as pandas and Python's csv write it); without this
    # pyarrow splits the file into blocks at a line break inside quotes and fails past its first block.
    parse = pcsv.ParseOptions(newlines_in_values=True)
    with pcsv.open_csv(path, parse_options=parse) as reader:  # reads the header (and a first block) only, for the names
        names = reader.schema.names
    as_text = pcsv.ConvertOptions(column_types={n: pa.string() for n in names})
    return pcsv.read_csv(path, parse_options=parse, convert_options=as_text).to_pylist()


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:  # "-sig": a byte-order mark (Windows editors write one) is not JSON
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {i + 1}: invalid JSON: {e.msg}") from None
    return rows


def _read_json(path: Path) -> list[dict]:
    """A JSON list of rows, a dict of columns, `{"data": [...]}`, or JSON lines under a .json name."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            json.loads(first)
        except json.JSONDecodeError:  # not JSON lines either: the document's own error, where it is
            raise DataError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
        return _read_jsonl(path)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: columns have different lengths {sorted(lengths)}")
        keys = list(value)
        return [dict(zip(keys, vals)) for vals in zip(*value.values())]
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(value).__name__}")
    return value


READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".parquet": _read_parquet, ".jsonl": _read_jsonl, ".json": _read_json, ".arrow": _read_arrow,
    ".csv": _read_csv,
}

_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
_SLICE_BOUNDS = r"\[(?P<start>-?\d*)(?P<start_pct>%?):(?P<stop>-?\d*)(?P<stop_pct>%?)\]"  # `datasets`' `[:-500]`
_SLICE = re.compile(rf"(?P<name>[\w.-]+){_SLICE_BOUNDS}")
_SPLIT = re.compile(rf"[\w.-]+(?:{_SLICE_BOUNDS})?")  # a split, or a slice of one


def split_slice(split: str, rows: list) -> list:
    """The rows of `train[:-500]`, `train[-500:]` or `train[10%:20%]`, as Python slices them (a percentage is of the
    split's rows, rounded); a bare split name keeps every row. This holds out part of a one-split dataset."""
    m = _SLICE.fullmatch(split)
    if m is None:
        return rows

    def bound(value: str, pct: str) -> int | None:
        return None if not value else round(int(value) * len(rows) / 100) if pct else int(value)

    return rows[bound(m["start"], m["start_pct"]):bound(m["stop"], m["stop_pct"])]


def _table_rows(ds: Any) -> list[dict]:
    """Rows of a `datasets.Dataset` without decoding images (image columns stay {"bytes", "path"})."""
    return ds.with_format("arrow")[:].to_pylist()


def _read_saved_dataset(path: Path) -> list[dict]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{path} is a `save_to_disk` folder; reading it needs `pip install datasets`") from None
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        raise DataError(f"{path} holds several splits {sorted(ds)}; name one, e.g. {path}@{sorted(ds)[0]}")
    return _table_rows(ds)


def _load_dataset(source: str, split: str | None) -> list[dict]:
    """Rows of one split of a hub dataset, or of a local folder in the hub's layout, via `datasets.load_dataset`."""
    try:
        from datasets import get_dataset_split_names, load_dataset
    except ImportError:
        raise DataError(f"reading {source!r} needs `pip install datasets`") from None
    try:
        if split is None:  # only a dataset with one split may leave it unnamed
            splits = get_dataset_split_names(source)
            if splits != ["train"]:
                raise DataError(f"{source} holds the splits {sorted(splits)}; name one, e.g. {source}@{sorted(splits)[0]}")
            split = "train"
        return _table_rows(load_dataset(source, split=split))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{source}" + (f"@{split}" if split else "")
                        + f": `datasets.load_dataset` failed: {type(e).__name__}: {e}") from None


def is_hub_name(spec: str) -> bool:
    """`owner/name` (optionally with a split) that is not a data file's name: a hub dataset's id."""
    name = split_suffix(spec)[0]
    return bool(_HUB_NAME.fullmatch(name)) and Path(name).suffix.lower() not in READERS


def split_suffix(spec: str) -> tuple[str, str | None]:
    """`NAME@split` (as EasyR1 writes it) or `owner/name:split` -> (NAME, split), where NAME is a local file or
    folder or has a hub name's shape; anything else, a file or folder that exists under the whole name too,
    -> (spec, None)."""
    if Path(spec).expanduser().exists():
        return spec, None
    for sep in ("@", ":"):
        head, found, split = spec.rpartition(sep)
        if found and _SPLIT.fullmatch(split) and (Path(head).expanduser().exists() or _HUB_NAME.fullmatch(head)):
            return head, split
    return spec, None


def read_source(spec: str) -> tuple[list[dict], Path]:
    """Rows of one file, folder or hub name (a split, or a slice of one), and the folder that relative media
    paths are relative to."""
    name, split = split_suffix(spec)
    sliced = _SLICE.fullmatch(split or "")
    if sliced:
        rows, base = read_source(f"{name}@{sliced['name']}")
        return split_slice(split, rows), base
    path = Path(name).expanduser()
    if path.is_dir():
        if any((path / marker).exists() for marker in ("state.json", "dataset_info.json", "dataset_dict.json")):
            if split is not None:  # a saved DatasetDict keeps each split in a folder of its own
                path = path / split
                if not path.is_dir():
                    raise DataError(f"{spec}: {name} has no split folder {split!r}")
            return _read_saved_dataset(path), path
        if not any(p.suffix.lower() in READERS for p in path.rglob("*") if p.is_file()):
            raise DataError(f"{spec}: a folder with no data files ({', '.join(READERS)}) and not a `save_to_disk` dataset")
        # A folder of data files in the hub's layout (a `huggingface-cli download` of a dataset repo, say):
        # `datasets` finds its splits from the file names (train/validation/test) or the README's configs.
        return _load_dataset(str(path), split), path
    if path.is_file():
        if split not in (None, "train"):  # as `datasets` reads one file (and EasyR1 its `file.parquet@train`)
            raise DataError(f"{spec}: {name} is one data file, whose only split is train (`@train`, or a slice "
                            "such as `@train[:-500]`)")
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{spec}: unknown data file type {path.suffix!r} (known: {', '.join(READERS)})")
        try:
            rows = reader(path)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{spec}: cannot read: {type(e).__name__}: {e}") from None
        return rows, path.parent
    if is_hub_name(name):
        try:
            return _load_dataset(name, split), Path.cwd()
        except DataError as e:
            raise DataError(f"{spec} is not a local file or folder, and as a hub dataset: {e}") from None
    hint = ""
    if "@" in spec:  # a dataset repo's folder: say how to get one
        hint = (f" (for a dataset repo: huggingface-cli download --repo-type dataset OWNER/NAME --local-dir "
                f"{spec.rpartition('@')[0]}; a synthetic stand-in in a public layout: rllava make-task NAME --layout L)")
    raise DataError(f"data file {spec!r} not found{hint}")


def split_specs(files: str) -> list[str]:
    """Comma-separated specs; glob patterns expand to their sorted matches."""
    specs = []
    for spec in (s.strip() for s in files.split(",")):
        if not spec:
            continue
        # A pattern, not `NAME@train[:-500]`, nor a file that exists under its own name (`rows[1].jsonl`).
        if any(c in spec for c in "*?[") and split_suffix(spec)[1] is None and not Path(spec).expanduser().exists():
            matches = sorted(glob.glob(str(Path(spec).expanduser())))  # `~/data/*.parquet`, as other paths
            if not matches:
                raise DataError(f"data pattern {spec!r} matches no file")
            specs.extend(matches)
        else:
            specs.append(spec)
    if not specs:
        raise DataError("no data files given (data.train_files / data.val_files is empty)")
    return specs


def load_rows_with_refs(files: str, cfg: DataConfig | None = None) -> tuple[list[dict], list[RowRef]]:
    """Concatenated rows of every source, each with its `RowRef`."""
    rows: list[dict] = []
    refs: list[RowRef] = []
    image_dir = Path(cfg.image_dir).expanduser() if cfg is not None and cfg.image_dir else None
    for entry, entry_spec in enumerate(file_entries(files)):
        for spec in split_specs(entry_spec):
            part, base = read_source(spec)
            for i, row in enumerate(part):
                if not isinstance(row, dict):
                    raise DataError(f"{spec}, row {i}: expected a mapping of fields, got {type(row).__name__}")
                rows.append(row)
                refs.append(RowRef(spec, i, image_dir or base, entry))
    return rows, refs


def file_entries(files: str) -> list[str]:
    """The comma-separated entries of a files setting, as written (a glob stays one entry)."""
    entries = [s.strip() for s in files.split(",") if s.strip()]
    if not entries:
        raise DataError("no data files given (data.train_files / data.val_files is empty)")
    return entries


def load_rows(files: str, cfg: DataConfig | None = None) -> list[dict]:
    """Concatenated rows (plain dicts) of comma-separated parquet / json / jsonl / csv / arrow files,
    `save_to_disk` folders, folders in the hub's layout and hub names (when online); `NAME@split` picks a split
    of a folder or hub dataset (`owner/name:split` works too)."""
    return load_rows_with_refs(files, cfg)[0]
