"""The command line's readers, model file and report helpers, in-process (lowrank_hpc.cli)."""
from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from lowrank_hpc import MatrixCompletion
from lowrank_hpc.cli import DataError, load_model, read_ratings
from lowrank_hpc.cli.demo import write_png
from lowrank_hpc.cli.model_file import CompletionModel
from lowrank_hpc.cli.report import json_safe, rmse


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def entries(data):
    """{(row id, col id): value} of a Ratings, in the original ids."""
    return {(data.row_ids[r].item(), data.col_ids[c].item()): v for r, c, v in zip(data.rows, data.cols, data.vals)}


# ---------------------------------------------------------------------- text formats
@pytest.mark.parametrize("text", [
    "user,item,rating,timestamp\n1,10,4.5,100\n2,10,3,101\n1,20,2,102\n",  # CSV with a header and a timestamp
    "1\t10\t4.5\n2\t10\t3\n1\t20\t2\n",  # TSV without a header
    "1::10::4.5::978300760\n2::10::3::978300761\n1::20::2::978300762\n",  # MovieLens
    "1 10   4.5\n2\t10 3\n\n# a comment\n1 20 2\n",  # whitespace, blank and comment lines
    "1;10;4.5\r\n2;10;3\r\n1;20;2\r\n",  # ';' with CRLF
])
def test_text_formats_read_the_same_entries(tmp_path, text):
    data = read_ratings(write(tmp_path, "ratings.txt", text))
    assert entries(data) == {(1, 10): 4.5, (2, 10): 3.0, (1, 20): 2.0}
    assert data.row_ids.dtype == np.int64 and data.shape == (2, 2)


def test_gzip_text(tmp_path):
    path = tmp_path / "ratings.csv.gz"
    with gzip.open(path, "wt") as stream:
        stream.write("a,x,1\nb,y,2\n")
    assert entries(read_ratings(str(path))) == {("a", "x"): 1.0, ("b", "y"): 2.0}


def test_string_ids_map_to_indices_and_quoted_fields(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", 'user,item,rating\nalice,"Heat, 1995",5\nbob,Up,3\nalice,Up,4\n'))
    assert data.row_ids.tolist() == ["alice", "bob"] and data.col_ids.tolist() == ["Heat, 1995", "Up"]
    assert entries(data) == {("alice", "Heat, 1995"): 5.0, ("bob", "Up"): 3.0, ("alice", "Up"): 4.0}
    assert data.header


def test_ids_are_labels_never_sizes(tmp_path):
    """1-based, sparse, negative and 10**12 ids give as many rows as distinct ids, no empty row 0."""
    data = read_ratings(write(tmp_path, "r.csv", f"1,{10**12},1\n5,-3,2\n-7,{10**12},3\n"))
    assert data.shape == (3, 2)
    assert data.row_ids.tolist() == [-7, 1, 5] and data.col_ids.tolist() == [-3, 10**12]
    assert entries(data)[(1, 10**12)] == 1.0


def test_integral_float_ids_are_integers_and_huge_integers_stay_exact(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "3.0,1,1\n3,2,2\n"))
    assert data.row_ids.tolist() == [3] and data.nnz == 2
    data = read_ratings(write(tmp_path, "big.csv", f"{10**20},1,1\n{10**20 + 1},1,2\n"))
    assert data.row_ids.tolist() == [str(10**20), str(10**20 + 1)]


def test_mixed_ids_are_text_as_written(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "7,a,1\nu8,b,2\n"))
    assert data.row_ids.tolist() == ["7", "u8"]


@pytest.mark.parametrize("line, message", [
    ("1,2,abc", "line 3: the value 'abc' is not a number"),
    ("1,2,nan", "line 3: the value 'nan' is not a finite number"),
    ("1,2,inf", "line 3: the value 'inf' is not a finite number"),
    ("1,2,", "line 3: the value is empty"),
    ("3.5,2,1", "line 3: the row id '3.5' is a number but not an integer"),
    ("1,nan,1", "line 3: the column id 'nan' is a number but not an integer"),
    ("1,2", "line 3: 2 field(s) where line 1 has 3 (short row)"),
    ("1,2,3,4", "line 3: 4 field(s) where line 1 has 3 (long row)"),
])
def test_bad_line_is_an_error_naming_it(tmp_path, line, message):
    path = write(tmp_path, "r.csv", f"1,1,1\n2,2,2\n{line}\n4,4,4\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_ratings(path)


def test_first_line_with_a_bad_value_is_data_not_a_header(tmp_path):
    with pytest.raises(DataError, match="line 1: the value 'abc'"):
        read_ratings(write(tmp_path, "r.csv", "1,2,abc\n1,3,4\n"))


def test_one_line_file_is_data(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "7,9,4.5\n"))
    assert data.shape == (1, 1) and data.vals.tolist() == [4.5]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"), ("\n\n# only a comment\n", "is empty"), ("user,item,rating\n", "header line and no data"),
    ("1,2\n", "found 2 field"),
])
def test_files_without_entries(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_ratings(write(tmp_path, "r.csv", text))


def test_header_option(tmp_path):
    path = write(tmp_path, "r.csv", "1,1,1\n2,2,2\n")
    assert read_ratings(path, header="yes").nnz == 1
    with pytest.raises(DataError, match="line 1: the value 'c' is not a number"):
        read_ratings(write(tmp_path, "h.csv", "a,b,c\n1,1,1\n"), header="no")


def test_duplicates_are_averaged(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "1,1,1\n1,1,3\n1,2,5\n1,1,5\n"))
    assert entries(data) == {(1, 1): 3.0, (1, 2): 5.0} and data.duplicates == 2


def test_missing_directory_and_binary_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_ratings(str(tmp_path / "absent.csv"))
    with pytest.raises(DataError, match="is a directory"):
        read_ratings(str(tmp_path))
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="looks like a binary file"):
        read_ratings(str(binary))


def test_latin1_text_is_read(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("Zoë,x,1\n".encode("latin-1"))
    assert read_ratings(str(path)).row_ids.tolist() == ["Zoë"]


# ---------------------------------------------------------------------- binary formats
def test_matrix_market_ids_are_its_one_based_indices(tmp_path):
    import scipy.io
    import scipy.sparse

    matrix = scipy.sparse.coo_matrix(([1.5, 2.0, -1.0], ([0, 2, 2], [1, 0, 3])), shape=(4, 5))
    scipy.io.mmwrite(str(tmp_path / "m.mtx"), matrix)
    data = read_ratings(str(tmp_path / "m.mtx"))
    assert data.shape == (4, 5) and data.row_ids.tolist() == [1, 2, 3, 4]
    assert entries(data) == {(1, 2): 1.5, (3, 1): 2.0, (3, 4): -1.0}
    scipy.io.mmwrite(str(tmp_path / "dense.mtx"), np.ones((2, 2)))
    with pytest.raises(DataError, match="coordinate format"):
        read_ratings(str(tmp_path / "dense.mtx"))


def test_npz_with_and_without_shape(tmp_path):
    np.savez(tmp_path / "a.npz", rows=np.array([0, 3]), cols=np.array([1, 1]), vals=np.array([1.0, 2.0]),
             shape=np.array([5, 2]))
    data = read_ratings(str(tmp_path / "a.npz"))
    assert data.shape == (5, 2) and data.row_ids.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "b.npz", rows=np.array(["u", "v"]), cols=np.array([10**12, 5]), vals=np.array([1.0, 2.0]))
    data = read_ratings(str(tmp_path / "b.npz"))
    assert entries(data) == {("u", 10**12): 1.0, ("v", 5): 2.0}
    np.savez(tmp_path / "c.npz", rows=np.array([0]), vals=np.array([1.0]))
    with pytest.raises(DataError, match="lacks the array"):
        read_ratings(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", rows=np.array([0, 1]), cols=np.array([0, 1]), vals=np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="entry 1: the value nan is not a finite number"):
        read_ratings(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "e.npz", rows=np.array([0, 7]), cols=np.array([0, 1]), vals=np.ones(2), shape=np.array([5, 2]))
    with pytest.raises(DataError, match="row index 7 is outside 0..4"):
        read_ratings(str(tmp_path / "e.npz"))


def test_parquet(tmp_path):
    path = tmp_path / "r.parquet"
    if importlib.util.find_spec("pandas") is None or importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match=r"needs pandas and pyarrow|needs pyarrow"):
            read_ratings(str(path))
        return
    import pandas as pd

    pd.DataFrame({"user": ["a", "b", "a"], "item": [1, 2, 2], "rating": [1.0, 2.0, 3.0]}).to_parquet(path)
    assert entries(read_ratings(str(path))) == {("a", 1): 1.0, ("b", 2): 2.0, ("a", 2): 3.0}


# ---------------------------------------------------------------------- the model file
def fitted_model(row_ids, col_ids, center="both"):
    rng = np.random.default_rng(1)
    n1, n2 = len(row_ids), len(col_ids)
    M = 3 + rng.standard_normal((n1, 2)) @ rng.standard_normal((2, n2))
    rows, cols = (a.astype(np.int64) for a in np.nonzero(rng.random((n1, n2)) < 0.6))
    params = {"center": center} if "center" in MatrixCompletion().get_params() else {}
    estimator = MatrixCompletion(rank=2, random_state=0, **params).fit(rows, cols, M[rows, cols], shape=(n1, n2))
    model = CompletionModel.from_estimator(estimator, np.asarray(row_ids), np.asarray(col_ids), rows, cols,
                                           center=center)
    return estimator, model, rows, cols


@pytest.mark.parametrize("row_ids, col_ids", [
    (sorted(f"user {k}" for k in range(12)), sorted(f"item,{k}" for k in range(9))),
    (sorted([-5, 0, 1, 10**12] + list(range(100, 108))), list(range(1, 10))),
])
def test_model_round_trip_keeps_ids_and_predictions(tmp_path, row_ids, col_ids):
    estimator, model, rows, cols = fitted_model(row_ids, col_ids)
    path = tmp_path / "model.npz"
    model.save(str(path))
    loaded = load_model(str(path))
    assert loaded.row_ids.tolist() == list(row_ids) and loaded.col_ids.tolist() == list(col_ids)
    assert loaded.row_ids.dtype == model.row_ids.dtype
    r = np.arange(len(row_ids)).repeat(len(col_ids))
    c = np.tile(np.arange(len(col_ids)), len(row_ids))
    expected = np.asarray(estimator.predict(r, c))
    np.testing.assert_allclose(loaded.predict_indices(r, c), expected, rtol=1e-12, atol=1e-12)
    ids_r, ids_c = np.asarray(row_ids)[r], np.asarray(col_ids)[c]
    np.testing.assert_allclose(loaded.predict_ids(ids_r, ids_c), expected, rtol=1e-12, atol=1e-12)
    assert (loaded.method, loaded.rank) == (estimator.method_, model.rank) == ("soft_impute", model.rank)
    np.testing.assert_array_equal(loaded.seen_indptr, model.seen_indptr)


def test_unknown_ids_get_the_bias_only_prediction():
    _, model, _, _ = fitted_model(list(range(10)), list(range(8)))
    rows, cols = model.lookup([3, 99, "abc"], [2, 2, 2])
    assert rows.tolist() == [3, -1, -1] and cols.tolist() == [2, 2, 2]
    predicted = model.predict_ids([99, 3, 99], [2, 1234, 4321])
    assert predicted[0] == pytest.approx(model.intercept + model.col_bias[2])
    assert predicted[1] == pytest.approx(model.intercept + model.row_bias[3])
    assert predicted[2] == pytest.approx(model.intercept)
    assert model.predict_ids(["3", "3.0"], [2, 2]).tolist() == [model.predict_ids([3], [2])[0]] * 2


@pytest.mark.parametrize("center", ["both", "none"])
def test_recommend_matches_brute_force(center):
    _, model, rows, cols = fitted_model([f"u{k:02d}" for k in range(15)], list(range(20)), center=center)
    full = model.predict_indices(np.arange(15).repeat(20), np.tile(np.arange(20), 15)).reshape(15, 20)
    k = 4
    results = model.recommend(model.row_ids, k)
    seen = np.zeros((15, 20), dtype=bool)
    seen[rows, cols] = True
    for i, (col_ids, scores) in enumerate(results):
        scores_all = np.where(seen[i], -np.inf, full[i])
        best = np.argsort(-scores_all, kind="stable")[:min(k, (~seen[i]).sum())]
        assert col_ids.tolist() == best.tolist()
        np.testing.assert_allclose(scores, full[i, best], rtol=1e-10)
    everything = model.recommend(["u03", "nobody"], 20, exclude_seen=False)
    assert sorted(everything[0][0].tolist()) == list(range(20))
    np.testing.assert_allclose(everything[1][1], np.sort(model.intercept + model.col_bias)[::-1])


def test_load_model_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", U=np.ones(2))
    with pytest.raises(DataError, match="is not a lowrank_hpc model file"):
        load_model(str(tmp_path / "x.npz"))
    (tmp_path / "y.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable lowrank_hpc model file"):
        load_model(str(tmp_path / "y.npz"))
    with pytest.raises(DataError, match="no such model file"):
        load_model(str(tmp_path / "z.npz"))


# ---------------------------------------------------------------------- reports and pictures
def test_json_safe_never_writes_nan():
    report = json_safe({"a": float("nan"), "b": np.float64(np.inf), "c": [np.int64(3), np.nan], "d": np.bool_(True)})
    assert json.dumps(report, allow_nan=False) == '{"a": null, "b": null, "c": [3, null], "d": true}'
    assert rmse(np.zeros(0), np.zeros(0)) is None and rmse(np.ones(2), np.zeros(2)) == 1.0


def read_png(path):
    """(width, height, pixels) of an 8-bit grayscale PNG without filtering, as write_png writes it."""
    raw = Path(path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(raw):
        (length,) = struct.unpack(">I", raw[position:position + 4])
        kind, payload = raw[position + 4:position + 8], raw[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", raw[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        position += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 0)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return width, height, rows[:, 1:]


def test_write_png_round_trips(tmp_path):
    pixels = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(7, 12)
    write_png(str(tmp_path / "p.png"), pixels)
    width, height, back = read_png(str(tmp_path / "p.png"))
    assert (width, height) == (12, 7)
    np.testing.assert_array_equal(back, pixels)


def test_pairs_with_text_ids_keep_their_first_line_and_a_header_is_still_found(tmp_path):
    """header="auto" for (row, col) pairs: a first line of words is a header only when neither
    word comes again in its column; text ids (alice, apple) recur, column names do not."""
    from lowrank_hpc.cli.readers import read_pairs
    data = read_pairs(write(tmp_path, "p.csv", "alice,apple\nbob,pear\nalice,pear\n"))
    assert not data.header
    np.testing.assert_array_equal(data.row_ids, ["alice", "bob"])
    np.testing.assert_array_equal(data.col_ids, ["apple", "pear"])
    np.testing.assert_array_equal(np.c_[data.rows, data.cols], [[0, 0], [0, 1], [1, 1]])
    named = read_pairs(write(tmp_path, "q.csv", "user,item\nalice,apple\nbob,pear\nalice,pear\n"))
    assert named.header
    np.testing.assert_array_equal(np.c_[named.rows, named.cols], [[0, 0], [0, 1], [1, 1]])
    assert read_pairs(write(tmp_path, "r.txt", "u i\n1 2\n3 4\n")).header
    assert not read_pairs(write(tmp_path, "s.csv", "alice,apple\nbob,pear\n"), header="no").header
