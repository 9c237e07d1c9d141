import json

import pytest

from bedkd_core import data
from bedkd_core.data import DataError, load_pool, load_task, read_table


def test_builtin_datasets_load_with_expected_sizes():
    sizes = {"sst2": (6920, 872, 1821), "olid": (11915, 1323, 859), "agnews": (11106, 10000, 7600)}
    for name, expected in sizes.items():
        splits = load_task(name)
        assert (len(splits.train), len(splits.dev), len(splits.test)) == expected
        assert splits.num_classes == data.NUM_CLASSES[name]
        assert set(splits.train.column_names) == {"text", "label"}
        assert set(splits.test["label"]) == set(range(splits.num_classes))


def test_pools_load_and_keep_their_extra_columns():
    mixed = load_pool("sst2", "syntactic_p20", "train")
    assert sum(mixed["poisoned"]) == 1383
    assert "src_idx" in load_pool("sst2", "style_bible_pool", "test").column_names
    with pytest.raises(DataError, match="unknown data kind"):
        load_pool("sst2", "bible", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_pool("agnews", "syntactic_p20", "train")


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path))
    with pytest.raises(DataError, match="does not hold the datasets"):
        data.data_root()
    monkeypatch.delenv("BEDKD_DATA")
    monkeypatch.setattr(data, "_candidate_roots", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DataError, match="data not found: looked in .*a, .*b.*bedkd download"):
        data.data_root()


def test_bring_your_own_folder_any_number_of_classes(tmp_path):
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text(
            "\n".join(json.dumps({"text": f"sample {i}", "label": i % 3}) for i in range(9)) + "\n")
    (tmp_path / "test.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(6)))
    splits = load_task(str(tmp_path))
    assert splits.num_classes == 3
    assert splits.test["label"] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok", "label": 0}\n{"text": "broken", "label": \n', r"x\.jsonl:2: malformed JSON"),
    ('{"text": "ok", "label": 0}\n{"sentence": "a", "label": 1}\n', r"x\.jsonl:2: needs fields `text` and `label`"),
    ('{"text": "  ", "label": 0}\n', r"x\.jsonl:1: empty text"),
    ('{"text": "a", "label": 5}\n', r"x\.jsonl:1: label 5 is outside 0\.\.1"),
    ('{"text": "a", "label": "pos"}\n', r"x\.jsonl:1: label 'pos' is not an integer"),
    ('{"text": "a", "label": 1.0}\n{"text": "b", "label": 1.5}\n', r"x\.jsonl:2: label 1\.5 is not an integer"),
    ('{"text": "a", "label": null}\n', r"x\.jsonl:1: label None is not an integer"),
    ('{"text": 123, "label": 0}\n', r"x\.jsonl:1: text is an int \(123\), expected a string"),  # not "empty text"
    ('{"text": "a", "label": 0}\n{"text": null, "label": 0}\n', r"x\.jsonl:2: text is null, expected a string"),
    ('{"text": ["a"], "label": 0}\n', r"x\.jsonl:1: text is a list \(\['a'\]\), expected a string"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_table(path, num_classes=2)


def test_malformed_csv_names_file_and_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,label\na,0\nb,-1\n")
    with pytest.raises(DataError, match=r"x\.csv:3: label -1 is outside 0\.\.K-1"):
        read_table(path)


def test_a_class_missing_from_train_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(6)))
    (tmp_path / "dev.jsonl").write_text('{"text": "d", "label": 1}\n')
    (tmp_path / "test.jsonl").write_text('{"text": "x", "label": 2}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: label 2 never occurs in the train split"):
        load_task(str(tmp_path))


def test_tsv_with_extra_field_names_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("text\tlabel\na\t0\nb\t1\textra\n")
    with pytest.raises(DataError, match=r"x\.tsv:3: more fields"):
        read_table(path)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="unknown dataset 'imdb': use one of sst2, olid, agnews"):
        load_task("imdb")


# ---------------------------------------------------------------- bad input (issue 17)

def write_folder(folder, *, train, dev=None, test=None):
    """A bring-your-own folder from {split: [(text, label), ...]} (dev and test default to one row per class)."""
    folder.mkdir(exist_ok=True)
    classes = sorted({label for _, label in train})
    for split, rows in {"train": train, "dev": dev, "test": test}.items():
        rows = rows if rows is not None else [(f"{split} {c}", c) for c in classes]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return folder


@pytest.mark.parametrize("labels, message", [
    ([0, 1] * 5 + [5], r"train\.jsonl:11: label 5 leaves class\(es\) \[2, 3, 4\] with no train rows"),
    ([0, 1] * 5 + [5, 5], r"train\.jsonl: class\(es\) \[2, 3, 4\] have no train rows but label\(s\) \[5\] do"),
    ([1] * 6, r"train\.jsonl: every train row has label 1; classes must be exactly 0\.\.K-1 with K >= 2"),
    ([0] * 6, r"train\.jsonl: every train row has label 0; classes must be exactly 0\.\.K-1 with K >= 2"),
    ([0, 2] * 3, r"train\.jsonl: class\(es\) \[1\] have no train rows but label\(s\) \[2\] do.*renumber the labels 0\.\.1"),
])
def test_classes_must_be_0_to_k_minus_1_each_in_train(tmp_path, labels, message):
    folder = write_folder(tmp_path / "own", train=[(f"t{i}", y) for i, y in enumerate(labels)],
                          dev=[("d", 0)], test=[("x", 0)])
    with pytest.raises(DataError, match=message) as info:
        load_task(str(folder))
    assert "0..K-1" in str(info.value)


@pytest.mark.parametrize("name", ["x.jsonl", "x.csv"])
def test_non_utf8_bytes_name_file_line_and_byte_offset(tmp_path, name):
    rows = [b'{"text": "ok", "label": 0}', b'{"text": "caf\xe9", "label": 1}'] if name.endswith("jsonl") \
        else [b"text,label", b"ok,0", b"caf\xe9,1"]
    raw = b"\n".join(rows) + b"\n"
    path = tmp_path / name
    path.write_bytes(raw)
    line, offset = len(rows), raw.index(0xE9)
    with pytest.raises(DataError, match=rf"x\.\w+:{line}: byte 0xe9 at offset {offset} is not UTF-8"):
        read_table(path)


@pytest.mark.parametrize("name, raw", [
    ("x.csv", b"\xef\xbb\xbftext,label\r\nhello,0\r\n\"two, words\",1\r\n"),
    ("x.tsv", b"\xef\xbb\xbftext\tlabel\r\nhello\t0\r\ntwo, words\t1\r\n"),
    ("x.jsonl", b'\xef\xbb\xbf{"text": "hello", "label": 0}\r\n{"text": "two, words", "label": 1}\r\n'),
])
def test_a_byte_order_mark_and_crlf_line_endings_are_accepted(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    table = read_table(path, num_classes=2)
    assert table["text"] == ["hello", "two, words"] and table["label"] == [0, 1]


def test_train_rows_that_duplicate_test_rows_are_warned_about(tmp_path):
    train = [(f"row {i}", i % 2) for i in range(10)]
    folder = write_folder(tmp_path / "own", train=train, test=[("row 3", 1), (" row  4 ", 0), ("new", 1)])
    with pytest.warns(UserWarning, match=r"train\.jsonl: 2 train rows have the same text as rows of .*test\.jsonl"):
        splits = load_task(str(folder))
    assert len(splits.train) == 10  # a warning, not a refusal


def test_the_duplicate_warning_shows_on_the_command_line(tmp_path, monkeypatch, capsys):
    from bedkd_core import cli, experiments

    def stop(**kwargs):
        raise DataError("stopped before training")

    monkeypatch.setattr(experiments, "get_victim", stop)
    folder = write_folder(tmp_path / "own", train=[(f"row {i}", i % 2) for i in range(20)], test=[("row 3", 1), ("x", 0)])
    assert cli.main(["run", "--dataset", str(folder), "--attack", "badnets", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bedkd: warning: " in err and "1 train row has the same text" in err and "stopped before training" in err


@pytest.mark.parametrize("dataset", ["olid", "agnews"])
def test_a_missing_data_root_names_the_dataset_asked_for(monkeypatch, tmp_path, dataset):
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path))
    with pytest.raises(DataError, match=rf"does not hold the datasets \(no {tmp_path / dataset / 'clean'}\)") as info:
        load_task(dataset)
    assert "sst2" not in str(info.value)
    monkeypatch.delenv("BEDKD_DATA")
    monkeypatch.setattr(data, "_candidate_roots", lambda: [tmp_path / "a"])
    with pytest.raises(DataError, match=rf"data not found for {dataset}: looked in .*a\b") as info:
        load_pool(dataset, "style_bible_pool", "train")
    assert "sst2" not in str(info.value) and f"bedkd download --dataset {dataset}" in str(info.value)


def test_a_root_holding_only_the_dataset_asked_for_is_used(monkeypatch, tmp_path):
    (tmp_path / "olid" / "clean").mkdir(parents=True)
    monkeypatch.setenv("BEDKD_DATA", str(tmp_path))
    assert data.data_root(dataset="olid") == tmp_path


def test_flag_columns_read_as_booleans_from_csv_too(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,label,is_poisoned\na,0,true\nb,1,0\nc,1,1\n")
    assert read_table(path, flags=("is_poisoned",))["is_poisoned"] == [True, False, True]
    path.write_text("text,label,is_poisoned\na,0,true\nb,1,yes\n")
    with pytest.raises(DataError, match=r"x\.csv:3: is_poisoned 'yes' is not a boolean"):
        read_table(path, flags=("is_poisoned",))


def test_a_column_of_mixed_types_is_a_message_not_a_traceback(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": 0, "source_label": 1}\n{"text": "b", "label": 1, "source_label": "x"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl: a column mixes value types .*give each column one type"):
        read_table(path)
