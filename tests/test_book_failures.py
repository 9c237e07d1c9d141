import json

import numpy as np
import pandas as pd
import pytest

from bedkd_core import book_failures, store
from bedkd_core.data import DataError


def report(*, victim=1.0, floor=0.1, defended=0.5, punished=32, precision=1.0, by_backdoor=None, target=1,
           kept=None, scale="quick"):
    defended_part = {"cacc": 0.85, "asr": defended}
    if by_backdoor:
        defended_part["asr_by_backdoor"] = by_backdoor
    return {"defense": {"name": "bedkd"}, "scale": scale, "victim": {"cacc": 0.86, "asr": victim},
            "clean_floor": {"asr": floor}, "defended": defended_part,
            "detection": {"n_flagged": punished, "precision": precision},
            "defense_details": {"inferred_target": target, "selected_epoch": kept}}


def curve(asr_by_epoch):
    return pd.DataFrame({"epoch": list(asr_by_epoch), "asr": list(asr_by_epoch.values())}).set_index("epoch"), None


@pytest.mark.parametrize("cell, expected", [
    (report(victim=0.12, floor=0.1, defended=0.3), "no backdoor to remove: the victim's ASR 0.12"),
    (report(punished=0), "nothing punished"),
    (report(defended=0.5, by_backdoor={"badnets": 0.99, "addsent": 0.02}, target=0),
     "one backdoor left: badnets ASR 0.99 while addsent 0.02; the punish set came from the inferred target 0"),
    (report(by_backdoor={"badnets": 0.3, "addsent": 0.0}, target=None), "from every class ranked together"),
    (report(precision=0.25), "identification: 8 of 32 punished rows were poisoned"),
    (report(precision=0.9), "most punished rows were poisoned (precision 0.90), yet the ASR stayed"),
])
def test_each_reason_is_read_from_the_cells_own_numbers(cell, expected):
    assert expected in book_failures.diagnose(cell)


def test_the_epoch_rule_is_blamed_only_when_the_curve_passed_the_floor():
    cell = report(precision=0.95, kept=4)
    assert book_failures.diagnose(cell, curve=curve({4: 0.44, 8: 0.0})) == (
        "epoch rule: the test curve reached ASR 0.00 at epoch 8, the rule kept epoch 4 (ASR 0.44) by the dev "
        "accuracy")
    assert book_failures.diagnose(cell, curve=curve({4: 0.44, 8: 0.3})).startswith("most punished rows")


def test_floor_failures_rank_the_cells_above_the_floor_and_skip_the_ablations(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    cells = {("beyond", "dual"): report(defended=0.5, by_backdoor={"badnets": 0.9, "addsent": 0.1}),
             ("beyond", "sos"): report(defended=0.4, precision=0.2),
             ("beyond", "badnets"): report(defended=0.12),  # within the floor + 5 points
             ("ablation-dmm", "badnets"): report(defended=0.99)}  # broken on purpose
    for (grid, attack), cell in cells.items():
        folder = tmp_path / grid / "sst2" / attack / "bedkd-fixed" / "seed0"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(cell))
    failures = book_failures.floor_failures()
    assert failures.attrs["judged"] == 3
    assert failures["cell"].tolist() == ["beyond: sst2/dual/bedkd-fixed", "beyond: sst2/sos/bedkd-fixed"]
    assert failures.loc[0, "defended ASR"] == "0.900 (badnets)"
    assert failures.loc[0, "above floor"] == pytest.approx(0.8)
    assert failures.loc[1, "why"].startswith("identification: 6 of 32")


def _lookalike_cell(tmp_path, monkeypatch, *, planted: int):
    """An SST-2 BadNets quick cell blamed on identification, whose stored scores put `planted` clean target
    rows below every poisoned row; returns the poisoned training rows' flags and labels."""
    from bedkd_core.attacks import AttackConfig
    from bedkd_core.book_beyond import poisoned_train

    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    attack = AttackConfig(name="badnets", target_label=1)
    _, poisoned = poisoned_train(dataset="sst2", attack=attack, scale="quick", seed=0)
    flags = np.asarray(poisoned.is_poisoned, dtype=bool)
    labels = np.asarray(poisoned.data["label"])
    score = np.where(flags, 0.05, 0.5)
    score[np.flatnonzero(~flags & (labels == 1))[:planted]] = 0.01
    cell = {**report(defended=0.6, precision=0.2), "dataset": "sst2", "scale": "quick", "seed": 0,
            "attack": attack.asdict()}
    cell["defense_details"].update(n_watched=16)
    folder = tmp_path / "beyond" / "sst2" / "badnets" / "bedkd-fixed" / "seed0"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(cell))
    scores = {"row": list(range(len(flags))), "score": score.tolist(), "is_poisoned": flags.astype(int).tolist()}
    (folder / "scores.json").write_text(json.dumps({"scores": scores}))
    return folder, flags, labels


def test_lookalikes_count_the_clean_target_rows_that_score_below_every_poisoned_row(tmp_path, monkeypatch):
    _, flags, labels = _lookalike_cell(tmp_path, monkeypatch, planted=12)
    table = book_failures.identification_lookalikes()
    assert table["cell"].tolist() == ["beyond: sst2/badnets/bedkd-fixed"]
    row = table.iloc[0]
    assert row["clean first"] == 12 and row["identified"] == 48 and row["target"] == 1
    assert row["poisoned rows"] == flags.sum() and row["target rows"] == (labels == 1).sum()
    assert row["poisoned among the lowest identified"] == pytest.approx(36 / 48)


def test_lookalikes_refuse_scores_that_the_rebuilt_rows_do_not_match(tmp_path, monkeypatch):
    folder, flags, _ = _lookalike_cell(tmp_path, monkeypatch, planted=0)
    saved = json.loads((folder / "scores.json").read_text())
    saved["scores"]["is_poisoned"][int(np.flatnonzero(~flags)[0])] = 1
    (folder / "scores.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="do not match its oracle flags.*rerun the cell"):
        book_failures.identification_lookalikes()
