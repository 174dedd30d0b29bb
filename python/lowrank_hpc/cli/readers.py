"""Observed entries from files, with their row and column ids mapped to 0..n-1 indices.

Formats (chosen by the file name; text otherwise):

- text: one entry per line, ``row col value`` separated by ``,`` (CSV, quotes allowed),
  tab, ``;``, ``::`` (MovieLens ``UserID::MovieID::Rating::Timestamp``) or whitespace; the
  separator is found on the first line. Extra columns (timestamps) are ignored, but every line
  must have as many fields as the first. Blank lines and lines starting with ``#`` are skipped.
  A first line is a header when its value and ids are not numbers (``header="auto"``).
  ``.gz`` files are read decompressed.
- ``.mtx`` (``.mtx.gz``): Matrix Market, coordinate format, real or integer values. Ids are the
  file's 1-based indices and the declared size is kept, so rows without entries exist.
- ``.npz``: arrays ``rows``, ``cols``, ``vals`` and optionally ``shape``. With ``shape``,
  rows and cols are 0-based indices into it (ids 0..n-1, empty rows kept); without, they are ids.
- ``.parquet``/``.pq``: the first three columns (needs pandas and pyarrow).

Ids are labels, never sizes: any integers (1-based, sparse, negative, 10**12) or text. A column
of ids whose every entry is an integer is read as integers (``"3.0"`` is the integer 3, ``"007"``
is 7); a column with any text label is read as text, every id taken as written. A non-integral
number (``"3.5"``), NaN or inf as an id, or an empty id, is an error naming its line.
Values must be finite numbers: text, NaN, inf or an empty field is an error naming its line,
never a dropped line. Repeated (row, col) pairs are averaged into one entry (so an entry is
never both trained on and held out); ``Ratings.duplicates`` counts the lines merged away.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import DataError

TEXT_SEPARATORS = ("::", "\t", ",", ";")
FORMATS = ("text", "mtx", "npz", "parquet")
_SEPARATOR_NAMES = {"::": "'::'", "\t": "tab", ",": "','", ";": "';'", None: "whitespace"}


@dataclass
class Ratings:
    """Observed entries: ``rows``, ``cols`` (nnz,) int64 indices into ``row_ids``/``col_ids``
    (sorted unique ids: int64 or str arrays), ``vals`` (nnz,) float64, sorted by (row, col)."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    row_ids: np.ndarray
    col_ids: np.ndarray
    source: str
    format: str
    duplicates: int = 0  # entries merged into others by averaging repeated (row, col) pairs
    header: bool = False
    counts: Optional[np.ndarray] = None  # (nnz,) lines merged into each entry; None: one each

    def summed_vals(self) -> np.ndarray:
        """(nnz,) the values of repeated pairs added up instead of averaged (an interaction log)."""
        return self.vals if self.counts is None else self.vals * self.counts

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.row_ids.shape[0]), int(self.col_ids.shape[0]))

    @property
    def nnz(self) -> int:
        return int(self.vals.shape[0])


def detect_format(path: str) -> str:
    """"mtx", "npz", "parquet" or "text", by the file name."""
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".mtx"):
        return "mtx"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"


def read_ratings(path: str, *, header: str = "auto", format: Optional[str] = None) -> Ratings:
    """The observed entries of ``path`` with ids mapped; DataError (one line) for any fault.

    header: "auto", "yes" or "no" (text files only). format: one of FORMATS, or None to choose
    by the file name.
    """
    path = os.fspath(path)
    check_readable(path)
    kind = format or detect_format(path)
    if kind == "npz":
        return _read_npz(path)
    if kind == "mtx":
        return _read_mtx(path)
    if kind == "parquet":
        row_tokens, col_tokens, vals, where = _read_parquet(path)
        had_header = True
    elif kind == "text":
        fast = _numeric_table(path, header)
        if fast is not None:
            (row_ids, rows), (col_ids, cols) = map_ids(fast[0]), map_ids(fast[1])
            return _merged(Ratings(rows, cols, fast[2], row_ids, col_ids, path, kind, header=fast[3]))
        columns, numbers, had_header = read_text_fields(path, 3, header=header, is_header=_ratings_header)
        where = line_locator(path, numbers)
        row_tokens, col_tokens = columns[0], columns[1]
        vals = parse_values(columns[2], where)
    else:
        raise DataError(f"unknown input format {kind!r}; valid formats are {', '.join(FORMATS)}")
    row_ids, rows = map_ids(parse_ids(row_tokens, where, "row"))
    col_ids, cols = map_ids(parse_ids(col_tokens, where, "column"))
    return _merged(Ratings(rows, cols, vals, row_ids, col_ids, path, kind, header=had_header))


def _pairs_header(fields: Sequence[str], rest: Sequence[Sequence[str]]) -> bool:
    """A first line is a header when neither of its ids is a number (``user,item``) and neither
    comes again in its column: text ids (``alice,apple``) are data, the other lines name them."""
    if any(_is_number(token) for token in fields[:2]):
        return False
    return not any(record[0] == fields[0] or record[1] == fields[1] for record in rest if len(record) >= 2)


def read_pairs(path: str, *, header: str = "auto", format: Optional[str] = None) -> Ratings:
    """The entries of a 0/1 matrix: text of (row, col) pairs (each a one) or of (row, col, value)
    lines (the third column the 0/1 value, further columns ignored), a .npz of rows, cols (vals
    optional, else ones; shape optional) or a .mtx (pattern, integer or real); ids mapped as
    :func:`read_ratings` maps them, repeated pairs merged. Listed zeros are kept, with their ids,
    for the caller to drop. DataError for any fault; a text value other than 0 or 1, or a pair
    listed as both, is one naming its line(s); the other formats' values are left for the
    factorization to name. With header "auto" a text file's first line is a header when neither
    of its two ids is a number and neither comes again in its column (``user,item``;
    ``alice,apple`` followed by ``alice,pear`` is data)."""
    path = os.fspath(path)
    check_readable(path)
    kind = format or detect_format(path)
    if kind == "npz":
        return _read_npz(path, pairs=True)
    if kind == "mtx":
        return _read_mtx(path, pairs=True)
    if kind != "text":
        raise DataError(f"format {kind!r} is not read for pairs; use text (row,col lines), .npz or .mtx")
    columns, numbers, had_header = read_text_fields(path, 2, header=header, is_header=_pairs_header,
                                                    optional_fields=1)
    where = line_locator(path, numbers)
    row_ids, rows = map_ids(parse_ids(columns[0], where, "row"))
    col_ids, cols = map_ids(parse_ids(columns[1], where, "column"))
    if len(columns) == 2:
        vals = np.ones(rows.shape[0], dtype=np.float64)
    else:
        vals = _binary_values(columns[2], where)
        _check_no_conflicts(rows, cols, vals, row_ids, col_ids, path, numbers)
    return _merged(Ratings(rows, cols, vals, row_ids, col_ids, path, kind, header=had_header))


def _binary_values(tokens: Sequence[str], where: "Where") -> np.ndarray:
    """(n,) float64 of a 0/1 value column; DataError naming the first line whose value is another."""
    vals = parse_values(tokens, where)
    bad = np.flatnonzero((vals != 0) & (vals != 1))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{_at(where, k)}: the value {tokens[k]!r} is neither 0 nor 1; a third column is read as "
                        "the entry's 0/1 value (drop it to list the ones alone)")
    return vals


def _check_no_conflicts(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, row_ids: np.ndarray,
                        col_ids: np.ndarray, path: str, numbers: np.ndarray) -> None:
    """DataError naming two lines that list the same (row, col) as 0 and as 1: merged, the pair would
    be neither, and the file does not say which it is."""
    order = np.lexsort((vals, cols, rows))  # within a pair, its zeros come before its ones
    same_pair = (rows[order][1:] == rows[order][:-1]) & (cols[order][1:] == cols[order][:-1])
    conflict = np.flatnonzero(same_pair & (vals[order][1:] != vals[order][:-1]))
    if conflict.size:
        earlier, later = sorted((int(order[conflict[0]]), int(order[conflict[0] + 1])))
        raise DataError(f"{path}, line {numbers[later]}: (row {row_ids[rows[later]]}, col {col_ids[cols[later]]}) is "
                        f"{vals[later]:g} here and {vals[earlier]:g} on line {numbers[earlier]}; a 0/1 matrix's entry "
                        "is one or the other")


# ---------------------------------------------------------------------- files
def check_readable(path: str) -> None:
    """DataError unless ``path`` is an existing regular file this process can read."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory; pass a file of observed entries")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied (cannot read it)")


def _read_bytes(path: str) -> bytes:
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                return stream.read()
        with open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def _decode(path: str, raw: bytes) -> str:
    if b"\0" in raw[:65536]:
        raise DataError(f"{path} looks like a binary file, not text; give a text file of row,col,value lines "
                        "or a .npz, .mtx or .parquet file (named so)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # old ratings files (MovieLens 1M) are Latin-1


# ---------------------------------------------------------------------- text
def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _ratings_header(fields: Sequence[str], rest: Sequence[Sequence[str]] = ()) -> bool:
    """A first line is a header when neither its value nor its ids are numbers
    (``userId,movieId,rating``); ``1,2,abc`` is data with a bad value."""
    return not any(_is_number(token) for token in fields[:3])


def _separator(line: str) -> Optional[str]:
    for separator in TEXT_SEPARATORS:
        if separator in line:
            return separator
    return None


def read_text_fields(path: str, n_fields: int, *, header: str = "auto",
                     is_header: Callable[[Sequence[str], Sequence[Sequence[str]]], bool] = _ratings_header,
                     optional_fields: int = 0) -> tuple[list[list[str]], np.ndarray, bool]:
    """The first ``n_fields`` columns of a delimited text file as lists of stripped strings, and
    up to ``optional_fields`` more where the lines have them; the 1-based line number of each
    record, and whether a header line was skipped (``is_header(first line's fields, the other
    lines' fields)`` decides with header "auto").

    Every line must have as many fields as the first (at least ``n_fields``), else DataError
    naming the line; further columns are ignored.
    """
    if header not in ("auto", "yes", "no"):
        raise DataError(f"header must be 'auto', 'yes' or 'no', got {header!r}")
    text = _decode(path, _read_bytes(path))
    numbered = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    numbered = [(number, line) for number, line in numbered if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise DataError(f"{path} is empty: it has no lines of {_wanted(n_fields)}")
    separator = _separator(numbered[0][1])
    if separator in (",", "\t", ";"):
        # The csv module parses quoted fields; it sees one record per (non-blank) line here.
        records = csv.reader([line for _, line in numbered], delimiter=separator)
        split = [[field.strip() for field in record] for record in records]
    elif separator == "::":
        split = [[field.strip() for field in line.split("::")] for _, line in numbered]
    else:
        split = [line.split() for _, line in numbered]
    numbers = [number for number, _ in numbered]
    first = split[0]
    skipped = header == "yes" or (header == "auto" and len(first) >= n_fields and is_header(first, split[1:]))
    if skipped:
        split, numbers = split[1:], numbers[1:]
        if not split:
            raise DataError(f"{path} has a header line and no data lines after it")
        first = split[0]
    expected = len(first)
    if expected < n_fields:
        raise DataError(f"{path}, line {numbers[0]}: found {expected} field(s) separated by "
                        f"{_SEPARATOR_NAMES[separator]}, expected {_wanted(n_fields)}")
    for record, number in zip(split, numbers):
        if len(record) != expected:
            kind = "short" if len(record) < expected else "long"
            raise DataError(f"{path}, line {number}: {len(record)} field(s) where line {numbers[0]} has "
                            f"{expected} ({kind} row); every line needs {_wanted(n_fields)}")
    columns = [[record[k] for record in split] for k in range(min(expected, n_fields + optional_fields))]
    return columns, np.asarray(numbers, dtype=np.int64), skipped


def _numeric_table(path: str, header: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """(row ids, col ids, values, header skipped) by numpy's C parser when the file is a plain
    table of numbers (integer ids, finite values, the same field count on every line); None
    otherwise, and the line-by-line reader then finds and names what is wrong."""
    import io
    import warnings

    text = _decode(path, _read_bytes(path))
    end = text.find("\n")
    first = text[:end if end >= 0 else len(text)].rstrip("\r")
    if not first.strip() or first.lstrip().startswith("#"):
        return None
    separator = _separator(first)
    if separator in (",", "\t", ";"):  # as read_text_fields reads it: a quoted number is a number
        fields = next(csv.reader([first], delimiter=separator))
    else:
        fields = first.split(separator) if separator else first.split()
    skipped = header == "yes" or (header == "auto" and len(fields) >= 3 and _ratings_header(fields))
    if separator == "::":
        if "\t" in text:
            return None
        text, separator = text.replace("::", "\t"), "\t"
    options = dict(delimiter=separator, comments="#", skiprows=int(skipped), ndmin=2, quotechar='"')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns about an empty file
            table = np.loadtxt(io.StringIO(text), dtype=np.float64, **options)  # checks the field counts
            if table.shape[0] == 0 or table.shape[1] < 3:
                return None
            ids = np.loadtxt(io.StringIO(text), dtype=np.int64, usecols=(0, 1), **options)
    except (ValueError, Warning):
        return None
    vals = np.ascontiguousarray(table[:, 2])
    if not np.isfinite(vals).all():
        return None
    return np.ascontiguousarray(ids[:, 0]), np.ascontiguousarray(ids[:, 1]), vals, skipped


def _wanted(n_fields: int) -> str:
    return "row, col, value" if n_fields == 3 else "row, col"


# ---------------------------------------------------------------------- values and ids
def parse_values(tokens: Sequence[str], where: "Where") -> np.ndarray:
    """(n,) float64 of the value tokens; DataError naming the first line that is not a finite number."""
    try:
        vals = np.asarray(tokens, dtype=str).astype(np.float64)
    except ValueError:
        for k, token in enumerate(tokens):
            if not _is_number(token):
                shown = "is empty" if token == "" else f"{token!r} is not a number"
                raise DataError(f"{_at(where, k)}: the value {shown}") from None
        raise  # unreachable: numpy and float() disagree
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{_at(where, k)}: the value {tokens[k]!r} is not a finite number (NaN and inf are not "
                        "observations; remove the line or give a number)")
    return vals


def parse_ids(tokens: Sequence[str], where: "Where", axis: str) -> np.ndarray:
    """(n,) int64 ids when every token is an integer, else a str array of the tokens as written.

    A token that is a non-integral number, NaN or inf is an error naming its line.
    """
    array = np.asarray(tokens, dtype=str)
    try:
        return array.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    integers, labels = [], False
    for k, token in enumerate(tokens):
        if token == "":  # else every line missing its id would be one entity, the id ""
            raise DataError(f"{_at(where, k)}: the {axis} id is empty; every entry needs a row id and a column id")
        try:
            integers.append(int(token))
            continue
        except ValueError:
            pass
        try:
            number = float(token)
        except ValueError:
            labels = True
            continue
        if not math.isfinite(number) or number != int(number):
            raise DataError(f"{_at(where, k)}: the {axis} id {token!r} is a number but not an integer; ids must be "
                            "integers or text labels")
        integers.append(int(number))
    if not labels and all(-2**63 <= value < 2**63 for value in integers):
        return np.asarray(integers, dtype=np.int64)
    if not labels:  # integers beyond int64 stay exact as text
        return np.asarray([str(value) for value in integers])
    return array


def map_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, (n,) int64 index of each id among them)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, inverse.reshape(-1).astype(np.int64)


# Where entry k came from, for messages: "ratings.csv, line 7".
Where = Callable[[int], str]


def line_locator(path: str, numbers: np.ndarray) -> Where:
    """A Where for the records of a text file with the given 1-based line numbers."""
    return lambda k: f"{path}, line {int(numbers[k])}"


def _at(where: Where, k: int) -> str:
    return where(k)


def _merged(ratings: Ratings) -> Ratings:
    """Entries sorted by (row, col), repeated pairs replaced by the mean of their values."""
    rows, cols, vals = ratings.rows, ratings.cols, ratings.vals
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.ones(rows.shape[0], dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    starts = np.flatnonzero(first)
    duplicates = rows.shape[0] - starts.shape[0]
    if duplicates:
        counts = np.diff(np.append(starts, rows.shape[0]))
        vals = np.add.reduceat(vals, starts) / counts
        rows, cols = rows[starts], cols[starts]
        ratings.counts = counts
    ratings.rows, ratings.cols, ratings.vals = rows, cols, np.ascontiguousarray(vals, dtype=np.float64)
    ratings.duplicates = int(duplicates)
    return ratings


# ---------------------------------------------------------------------- binary formats
def _read_npz(path: str, *, pairs: bool = False) -> Ratings:
    """Entries of a .npz (rows, cols, vals[, shape]); with ``pairs`` vals may be absent (ones)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise DataError(f"{path} holds a single array, not .npz arrays rows, cols, vals")
            wanted = ("rows", "cols") if pairs else ("rows", "cols", "vals")
            missing = [key for key in wanted if key not in data.files]
            if missing:
                raise DataError(f"{path} lacks the array(s) {', '.join(missing)}; a .npz of entries holds rows, cols, "
                                f"{'optionally vals' if pairs else 'vals'} and optionally shape")
            arrays = {key: data[key] for key in ("rows", "cols", "vals", "shape") if key in data.files}
            if "vals" not in arrays:
                arrays["vals"] = np.ones(arrays["rows"].shape, dtype=np.float64)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        reason = "it holds Python objects; save ids as integers or strings" if "pickle" in str(error) else str(error)
        raise DataError(f"{path} is not a readable .npz file ({reason})") from None
    rows, cols, vals = (arrays[key].reshape(-1) if arrays[key].ndim == 1 else arrays[key]
                        for key in ("rows", "cols", "vals"))
    for name, array in (("rows", rows), ("cols", cols), ("vals", vals)):
        if array.ndim != 1:
            raise DataError(f"{path}: {name} must be 1-D, got shape {array.shape}")
    if not rows.shape == cols.shape == vals.shape:
        raise DataError(f"{path}: rows, cols and vals have lengths {rows.shape[0]}, {cols.shape[0]} and "
                        f"{vals.shape[0]}; they must be equal")
    if rows.shape[0] == 0:
        raise DataError(f"{path} holds no entries (rows, cols and vals are empty)")
    if vals.dtype.kind not in "iuf":
        raise DataError(f"{path}: vals has dtype {vals.dtype}; it must hold numbers")
    vals = vals.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise DataError(f"{path}, entry {int(bad[0])}: the value {float(vals[bad[0]])!r} is not a finite number")
    row_ids = _npz_ids(path, rows, "row")
    col_ids = _npz_ids(path, cols, "column")
    if "shape" in arrays:
        shape = arrays["shape"].reshape(-1)
        if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 1).any():
            raise DataError(f"{path}: shape must hold two integers >= 1, got {arrays['shape'].tolist()}")
        indices = []
        for axis, ids, size in (("row", row_ids, int(shape[0])), ("column", col_ids, int(shape[1]))):
            if ids.dtype.kind not in "iu":
                raise DataError(f"{path}: with a shape, {axis} indices must be integers, got {ids.dtype}")
            outside = np.flatnonzero((ids < 0) | (ids >= size))
            if outside.size:
                k = int(outside[0])
                raise DataError(f"{path}, entry {k}: {axis} index {int(ids[k])} is outside 0..{size - 1} of the "
                                f"shape {tuple(int(s) for s in shape)}")
            indices.append((np.arange(size, dtype=np.int64), ids.astype(np.int64)))
        (row_ids, rows), (col_ids, cols) = indices
    else:
        row_ids, rows = map_ids(row_ids)
        col_ids, cols = map_ids(col_ids)
    return _merged(Ratings(rows, cols, vals, row_ids, col_ids, path, "npz"))


def _npz_ids(path: str, ids: np.ndarray, axis: str) -> np.ndarray:
    if ids.dtype.kind in "iu":
        if ids.dtype.kind == "u" and ids.size and ids.max() >= 2**63:
            return ids.astype(str)
        return ids.astype(np.int64)
    if ids.dtype.kind == "U":
        return parse_ids(ids.tolist(), lambda k: f"{path}, entry {k}", axis)
    if ids.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(ids) | (ids != np.round(ids)))
        if bad.size:
            k = int(bad[0])
            raise DataError(f"{path}, entry {k}: the {axis} id {float(ids[k])!r} is not an integer")
        return ids.astype(np.int64)
    raise DataError(f"{path}: {axis} ids have dtype {ids.dtype}; use integers or strings")


def _read_mtx(path: str, *, pairs: bool = False) -> Ratings:
    """Entries of a coordinate Matrix Market file; with ``pairs`` the 'pattern' field (ones) too."""
    import scipy.io
    import scipy.sparse

    try:
        n1, n2, _, layout, field, _ = scipy.io.mminfo(path)
    except (OSError, ValueError, IndexError, EOFError) as error:
        raise DataError(f"{path} is not a Matrix Market file ({error})") from None
    if layout != "coordinate":
        raise DataError(f"{path} is a dense ('{layout}') Matrix Market file; give the observed entries in "
                        "coordinate format")
    if field not in ("real", "integer", "double") and not (pairs and field == "pattern"):
        raise DataError(f"{path}: Matrix Market field '{field}' has no real values to complete (need real or "
                        "integer)")
    try:
        matrix = scipy.sparse.coo_matrix(scipy.io.mmread(path))
    except (OSError, ValueError, IndexError, EOFError) as error:
        raise DataError(f"{path} is not a valid Matrix Market file ({error})") from None
    rows, cols = matrix.row.astype(np.int64), matrix.col.astype(np.int64)
    vals = np.asarray(matrix.data, dtype=np.float64)
    if vals.shape[0] == 0:
        raise DataError(f"{path} holds no entries")
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{path}: the entry at row {rows[k] + 1}, column {cols[k] + 1} has the value "
                        f"{float(vals[k])!r}, not a finite number")
    row_ids = np.arange(1, int(n1) + 1, dtype=np.int64)  # the format's 1-based indices
    col_ids = np.arange(1, int(n2) + 1, dtype=np.int64)
    return _merged(Ratings(rows, cols, vals, row_ids, col_ids, path, "mtx"))


def _read_parquet(path: str):
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"reading Parquet ({path}) needs pandas and pyarrow: pip install 'lowrank_hpc[parquet]'"
                        ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise DataError(f"reading Parquet ({path}) needs pyarrow: pip install 'lowrank_hpc[parquet]'") from None
    except Exception as error:  # pyarrow raises its own types for damaged files
        raise DataError(f"{path} is not a readable Parquet file ({type(error).__name__}: {error})") from None
    if frame.shape[1] < 3:
        raise DataError(f"{path} has {frame.shape[1]} column(s); expected row, col, value as its first three")
    if frame.shape[0] == 0:
        raise DataError(f"{path} holds no rows")

    def where(k: int) -> str:
        return f"{path}, table row {k + 1}"

    tokens = []
    for position in range(2):
        column = frame.iloc[:, position]
        if column.isna().any():
            k = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DataError(f"{where(k)}: the {'row' if position == 0 else 'column'} id is missing")
        tokens.append([str(v) for v in column.tolist()])
    values = frame.iloc[:, 2]
    if values.dtype.kind in "iuf":
        vals = values.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            k = int(bad[0])
            raise DataError(f"{where(k)}: the value {float(vals[k])!r} is not a finite number")
    else:
        vals = parse_values([str(v) for v in values.tolist()], where)
    return tokens[0], tokens[1], vals, where
