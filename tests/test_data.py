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
    with pytest.raises(DataError, match=r"test\.jsonl: label\(s\) \[2\] never occur in the train split"):
        load_task(str(tmp_path))


def test_tsv_with_extra_field_names_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("text\tlabel\na\t0\nb\t1\textra\n")
    with pytest.raises(DataError, match=r"x\.tsv:3: more fields"):
        read_table(path)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="unknown dataset 'imdb': use one of sst2, olid, agnews"):
        load_task("imdb")
