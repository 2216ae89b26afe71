"""odezoo.data's time series: the Series checks, the .ts reader, load_series, irregular, spirals."""

import os

import numpy as np
import pytest

from odezoo import data
from odezoo._errors import DataError

TS = """# a comment
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:4,5,6:a
7,?,9,10:11,12,13,14:b
0.5:1.5:a
"""


def _write(tmp_path, text, name="Tiny_TRAIN.ts"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_read_ts_pads_ragged_cases_and_masks_missing_values(tmp_path):
    s = data.read_ts(_write(tmp_path, TS))
    assert s.values.shape == (3, 4, 2) and s.classes == ("a", "b")
    assert list(s.lengths) == [3, 4, 1] and list(s.labels) == [0, 1, 0]
    np.testing.assert_array_equal(s.values[1, :, 0], [7, 0, 9, 10])
    np.testing.assert_array_equal(s.mask[1, :, 0], [1, 0, 1, 1])
    np.testing.assert_array_equal(s.mask[0, 3], [0, 0])  # padding
    np.testing.assert_array_equal(s.times[0], [0, 1, 2, 2])  # padding holds the last time
    np.testing.assert_array_equal(s.values[2, 0], [0.5, 1.5])


def test_read_ts_with_time_stamps(tmp_path):
    text = (
        TS.replace("@timeStamps false", "@timeStamps true").split("@data")[0] + "@data\n(0.5,1),(2,3):(0.5,4),(2,?):b\n"
    )
    s = data.read_ts(_write(tmp_path, text))
    np.testing.assert_array_equal(s.times[0], [0.5, 2.0])
    np.testing.assert_array_equal(s.mask[0], [[1, 1], [1, 0]])


@pytest.mark.parametrize(
    "body, message",
    [
        ("1,2:3,4:5,6:a\n", "line 10: case 0: 3 dimensions, the file's others have 2"),
        ("1,2:3,4:c\n", "line 10: case 0: class label 'c' is not one of"),
        ("1,x:3,4:a\n", "line 10: case 0, dimension 0: 'x' is not a number"),
        ("1,inf:3,4:a\n", "is not finite"),
        ("?,?:?,?:a\n", "case 0 has no observations"),
        ("", "no cases after @data"),
    ],
)
def test_read_ts_names_the_bad_line(tmp_path, body, message):
    text = TS.split("@data")[0] + "@data\n" + body
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as info:
        data.read_ts(_write(tmp_path, text))
    assert "Tiny_TRAIN.ts" in str(info.value)


def test_read_ts_header_faults(tmp_path):
    with pytest.raises(DataError, match="no @data line"):
        data.read_ts(_write(tmp_path, "@problemName x\n@classLabel true a\n"))
    with pytest.raises(DataError, match="no @classLabel"):
        data.read_ts(_write(tmp_path, "@problemName x\n@data\n1:a\n"))
    equal = TS.replace("@equalLength false", "@equalLength true\n@seriesLength 3")
    with pytest.raises(DataError, match=r"case 1: length \[4\], @seriesLength says 3"):
        data.read_ts(_write(tmp_path, equal))
    with pytest.raises(DataError, match="cannot read it"):
        data.read_ts(str(tmp_path / "absent.ts"))


def test_series_checks_name_the_sample():
    n, t, c = 3, 4, 2
    values, times = np.zeros((n, t, c)), np.tile(np.arange(t, dtype=float), (n, 1))
    mask, lengths = np.ones((n, t, c)), np.full(n, t)
    bad_times = times.copy()
    bad_times[2, 2] = bad_times[2, 1]
    with pytest.raises(ValueError, match=r"sample 2: times not increasing at step 2 \(t\[1\] = 1.0, t\[2\] = 1.0\)"):
        data.Series(values, bad_times, mask, lengths)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4, 1\) but values have \(3, 4, 2\)"):
        data.Series(values, times, mask[..., :1], lengths)
    empty = mask.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match="sample 1 has no observations"):
        data.Series(values, times, empty, lengths)
    with pytest.raises(ValueError, match=r"sample 0: length 5 is outside \[1, T = 4\]"):
        data.Series(values, times, mask, np.array([5, 4, 4]))
    with pytest.raises(ValueError, match="sample 1: observed entries past its length 2"):
        data.Series(values, times, mask, np.array([4, 2, 4]))
    nan = values.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="sample 0: an observed value is not finite"):
        data.Series(nan, times, mask, lengths)
    masked = mask.copy()
    masked[0, 0, 0] = 0
    s = data.Series(nan, times, masked, lengths)  # a NaN where nothing was observed is dropped
    assert s.values[0, 0, 0] == 0 and set(s.inputs()) == {"values", "times", "mask"}


def test_japanese_vowels_from_the_sktime_wheel():
    if data.sktime_data_dir() is None:
        pytest.skip("sktime is not installed (pip install 'odezoo[timeseries]')")
    train, test = data.load_series("japanese_vowels", "train"), data.load_series("japanese_vowels", "test")
    assert (len(train), len(test)) == (270, 370) and train.channels == 12 and train.num_classes == 9
    lengths = np.concatenate([train.lengths, test.lengths])
    assert (lengths.min(), lengths.max()) == (7, 29)
    assert np.bincount(train.labels).tolist() == [30] * 9  # 30 utterances per speaker
    assert train.mask.sum() == train.lengths.sum() * 12  # complete


def test_data_dir_comes_first_and_a_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    folder = tmp_path / "JapaneseVowels"
    folder.mkdir()
    _write(folder, TS, "JapaneseVowels_TRAIN.ts")
    monkeypatch.setenv("ODEZOO_DATA_DIR", str(tmp_path))
    assert len(data.load_series("japanese_vowels", "train")) == 3  # the fixture, not sktime's copy
    import odezoo._series as series_module

    monkeypatch.setattr(series_module, "sktime_data_dir", lambda: None)
    with pytest.raises(DataError, match=r"BasicMotions_TEST.ts not found .*pip install 'odezoo\[timeseries\]'"):
        data.load_series("basic_motions", "test")
    with pytest.raises(LookupError, match="Did you mean 'japanese_vowels'"):
        data.load_series("japanese_vowel")
    with pytest.raises(ValueError, match="split=.valid"):
        data.load_series("spirals", "valid")


def test_irregular_drops_whole_steps_per_sample_reproducibly():
    rng = np.random.default_rng(0)
    n, t, c = 20, 10, 3
    lengths = rng.integers(2, t + 1, size=n)
    mask = (np.arange(t)[None, :, None] < lengths[:, None, None]).repeat(c, 2).astype(float)
    s = data.Series(rng.normal(size=(n, t, c)), np.tile(np.arange(t, dtype=float), (n, 1)), mask, lengths)
    dropped = data.irregular(s, drop=0.5, seed=3)
    assert np.array_equal(dropped.mask, data.irregular(s, drop=0.5, seed=3).mask)
    assert not np.array_equal(dropped.mask, data.irregular(s, drop=0.5, seed=4).mask)
    kept_steps = dropped.mask.max(-1).sum(1)
    np.testing.assert_array_equal(kept_steps, lengths - np.minimum(np.round(0.5 * lengths), lengths - 1))
    assert (dropped.mask.min(-1) == dropped.mask.max(-1)).all()  # the same steps in every channel
    assert (dropped.mask <= s.mask).all() and np.array_equal(dropped.times, s.times)
    per_channel = data.irregular(s, drop=0.5, seed=3, per_channel=True)
    assert (per_channel.mask.sum((1,)) == np.maximum(lengths - np.round(0.5 * lengths), 1)[:, None]).all()
    with pytest.raises(ValueError, match="drop=1.0"):
        data.irregular(s, drop=1.0)


def test_spirals_are_two_labelled_directions_with_increasing_times():
    s = data.load_series("spirals", "train")
    assert s.values.shape == (1000, 30, 2) and set(np.unique(s.labels)) == {0, 1}
    assert (np.diff(s.times, axis=1) > 0).all()
    arcs, times, labels = data.spiral_arcs(4, seed=0)
    # counter-clockwise (0) turns with positive angular velocity, clockwise (1) with negative
    angle = np.unwrap(np.arctan2(arcs[..., 1], arcs[..., 0]), axis=1)
    assert all((np.diff(angle[i]) > 0).all() == (labels[i] == 0) for i in range(4))
    assert os.path.basename(data.load_series("spirals", "test").name) == "spirals"


def test_times_after_is_each_rows_grid_suffix_padded_with_the_last_time():
    from odezoo._series import times_after

    grid = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    times, valid = times_after(grid, [-1.0, 0.5, 1.7, 2.0])
    for row, t0 in enumerate([-1.0, 0.5, 1.7, 2.0]):
        after = [t for t in grid if t > t0]
        assert list(times[row][valid[row]]) == after
        assert np.all(times[row][~valid[row]] == 2.0) and valid[row].sum() == len(after)
        assert np.all(np.diff(times[row]) >= 0)
