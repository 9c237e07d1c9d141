"""The chapter plumbing in bedkd_core.book: results files, grid views, tables and small model helpers."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bedkd_core import book, store


def write_cell(grid, defense, *, report=None, curve=None, scores=None, attack="badnets"):
    folder = store.cell_dir(grid=grid, dataset="sst2", attack=attack, defense=defense)
    folder.mkdir(parents=True)
    base = {"scale": "full", "victim": {"cacc": 0.9, "asr": 1.0}, "defended": {"cacc": 0.88, "asr": 0.1},
            "defense": {"name": "bedkd", "tau": 0.1, "punish_bound": 3.0},
            "detection": {"precision": 0.75, "recall": 0.05, "n_flagged": 32},
            "defense_details": {"selected_epoch": 10, "final_trust_loss": 0.2, "final_punish_loss": -3.1},
            "seconds": {"victim": 1.0, "defense": 2.0},
            "provenance": {"git_commit": "abc123def4567890", "device": "cpu (x86_64, 2 cores)",
                           "date": "2026-11-26T08:00:00Z"}}
    (folder / "report.json").write_text(json.dumps({**base, **(report or {})}))
    if curve is not None:
        (folder / "curve.json").write_text(json.dumps(curve))
    if scores is not None:
        (folder / "scores.json").write_text(json.dumps({"scores": scores}))
    return folder


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RESULTS_DIR", tmp_path)
    curve = {"curve": [{"epoch": 5, "cacc": 0.9, "asr": 0.3}, {"epoch": 10, "cacc": 0.89, "asr": 0.2}],
             "history": [{"epoch": 5, "dev_accuracy": 0.8}, {"epoch": 10, "dev_accuracy": 0.79}]}
    scores = [{"score": 0.01, "is_poisoned": True}, {"score": 0.5, "is_poisoned": False}]
    write_cell("full", "bedkd-fixed", curve=curve, scores=scores)
    write_cell("full", "bedkd-fixed-no-bound", report={"defense": {"name": "bedkd", "punish_bound": None},
                                                       "defense_details": {"final_punish_loss": -12.0}})
    return tmp_path


def test_api_summary_names_each_object_and_fits_the_column():
    text = book.api_summary(objects=[book.results_frame, book.grid_view])
    assert "bedkd_core.book.results_frame(grid: str" in text.replace("\n        ", "")
    assert "One row per cell" in text and "Every cell of sweep grid" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_cell_files_are_read_through_the_book(results):
    folder = store.cell_dir(grid="full", dataset="sst2", attack="badnets", defense="bedkd-fixed")
    assert book.cell_report(folder)["defense"]["tau"] == 0.1
    assert book.cell_scores(folder)["is_poisoned"].tolist() == [True, False]
    points, dev = book.cell_curve(folder)
    assert points["asr"].to_dict() == {5: 0.3, 10: 0.2} and dev[10] == 0.79
    columns = {"scores": {"row": [0, 1], "score": [0.01, 0.5], "is_poisoned": [True, False]}}
    (folder / "scores.json").write_text(json.dumps(columns))  # the columnar form runs write
    assert book.cell_scores(folder)[["score", "is_poisoned"]].values.tolist() == [[0.01, True], [0.5, False]]
    missing = store.cell_dir(grid="full", dataset="sst2", attack="badnets", defense="bedkd-fixed-no-bound")
    assert book.cell_scores(missing) is None and book.cell_curve(missing) is None
    assert book.cell_report(results / "nowhere") is None
    faithful = {"curve": [{"epoch": 5, "cacc": 0.86, "asr": 0.0}],  # holdout 0: no dev rows watched
                "history": [{"epoch": e, "trust_loss": 0.1, "punish_loss": -0.1} for e in range(1, 6)]}
    (folder / "curve.json").write_text(json.dumps(faithful))
    points, dev = book.cell_curve(folder)
    assert points["asr"].to_dict() == {5: 0.0} and dev.empty


def test_load_curves_starts_at_the_victim_and_names_the_kept_epoch(results):
    frame = book.results_frame("full").assign(grid="full")
    curves = book.load_curves(frame=frame)
    assert curves["epoch"].tolist() == [0, 5, 10]  # the no-bound cell has no curve.json
    assert curves["ASR"].tolist() == [1.0, 0.3, 0.2]
    assert set(curves["kept_epoch"]) == {10} and set(curves["cell"]) == {"sst2/badnets/bedkd-fixed"}
    losses = book.final_punish_losses(frame=frame).set_index("cell")
    assert losses["final punish loss"].to_dict() == {"sst2/badnets/bedkd-fixed": -3.1,
                                                     "sst2/badnets/bedkd-fixed-no-bound": -12.0}
    assert losses["punish_bound"].tolist() == ["3.0", "None"]


def test_bedkd_runs_and_the_epoch_rule(results):
    runs = book.bedkd_runs()
    assert len(runs) == 2 and set(runs["precision"]) == {0.75}
    assert book.run_name(runs.iloc[0]) == "full: sst2/badnets/bedkd-fixed"
    rule = book.epoch_rule(runs=runs)
    assert len(rule) == 1  # only one run saved a curve
    row = rule.iloc[0]
    assert (row["epoch kept"], row["at epoch"], row["dev accuracy, kept epoch"]) == (10, 10, 0.79)


def test_compare_tables_name_the_cell_without_a_local_path(results):
    folder = results / "compare" / "sst2-badnets"
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({
        "dataset": "sst2", "attack": {"name": "badnets"}, "scale": "quick", "seed": 0, "model": "minilm",
        "provenance": {"git_commit": "abc", "device": "cpu", "date": "2026-11-26"},
        "clean_floor": {"cacc": 0.8, "asr": 0.1}, "columns": ["defense", "asr"], "rows": [["strip", 0.2]]}))
    [(line, table)] = book.compare_tables()
    assert line.startswith("compare/sst2-badnets: sst2 · badnets") and str(results) not in line
    assert "clean-model floor: CACC 0.800" in line and table["asr"].tolist() == [0.2]


def test_select_cells_keeps_the_given_order_and_metric_text_says_not_yet_run(results):
    cells = [("sst2", "addsent", "bedkd-fixed"), ("sst2", "badnets", "bedkd-fixed")]
    frame = book.results_frame("full", expected=cells)
    picked = book.select_cells(frame=frame, cells=cells)
    assert picked["attack"].tolist() == ["addsent", "badnets"]
    texts = [book.metric_text(row=row, column="victim_asr") for _, row in picked.iterrows()]
    assert texts == [book.NOT_RUN, "1.000"]


def test_grid_matrix_labels_missing_cells_and_results_frame_keeps_filter_rates(results):
    write_cell("paper", "strip", report={"defended": {"cacc": 0.87, "asr": 0.2, "frr": 0.01, "far": 0.3},
                                         "defense": {"name": "strip"}})
    frame = book.results_frame("paper", expected=[("sst2", "badnets", "strip"), ("sst2", "badnets", "rap")])
    assert frame.set_index("defense").loc["strip", "far"] == 0.3
    values, labels = book.grid_matrix(frame=frame, metric="far", datasets=["sst2"], attacks=["badnets"],
                                      defenses=["strip", "rap"])
    assert labels.loc[("sst2", "badnets")].tolist() == ["0.30", book.NOT_RUN]
    assert np.isnan(values.loc[("sst2", "badnets"), "rap"])


def test_grid_view_lists_every_cell_of_a_grid(results):
    view = book.grid_view(name="ablation-dmm")
    assert list(view.columns) == book.GRID_VIEW_COLUMNS
    assert len(view) > 1 and set(view["status"]) <= {book.NOT_RUN, "unsupported", "not runnable"}
    assert all(line.startswith("unsupported ") for line in book.unsupported_lines(view=view))


def test_rerun_victims_does_nothing_below_full_scale():
    frame = pd.DataFrame({"dataset": ["sst2"], "attack": ["badnets"], "status": [book.NOT_RUN]})
    assert book.rerun_victims(frame=frame, scale="quick") == [
        "BEDKD_SCALE=quick: skipped; 1 cell(s) would run at full scale"]


def test_live_row_and_epoch_pages():
    row = book.live_row(name="strip", metrics={"cacc": 0.9, "asr": 0.25, "frr": 0.01}, seconds=3.0,
                        source="live", victim={"asr": 1.0})
    assert row["ASR reduction"] == 0.75 and row["CACC_all"] == 0.9 and row["FAR"] is None
    curve = pd.DataFrame({"epoch": [0, 1], "cacc": [0.9, 0.88], "asr": [1.0, 0.2]})
    history = pd.DataFrame({"epoch": [1], "trust_loss": [0.3], "punish_loss": [float("nan")]})
    pages = book.epoch_pages(curve=curve, history=history, start={"cacc": 0.9, "asr": 1.0})
    assert "victim: no training yet" in pages[0] and "punish loss n/a" in pages[1] and "0.200" in pages[1]


def test_detection_at_tau_scores_rows_under_tau_and_identified_rows():
    from bedkd_core.defenses.bedkd import make_config

    labels = np.array([0] * 50 + [1] * 50)
    score = np.r_[np.full(50, 0.5), np.full(10, 0.01), np.full(40, 0.5)]
    scores = {"score": score, "teacher_pred": labels.copy(), "dmm_pred": labels.copy()}
    reference = {"labels": np.array([0, 1] * 10), "score": np.full(20, 0.5)}
    is_poisoned = np.zeros(100, bool)
    is_poisoned[50:60] = True
    table, details = book.detection_at_tau(tau=0.1, scores=scores, labels=labels, reference=reference,
                                           config=make_config(n_poison=8, refine="none"), num_classes=2,
                                           is_poisoned=is_poisoned)
    assert table["precision"].tolist() == [1.0, 1.0] and details["n_under_tau"] == 10


def test_poisoning_helpers_on_real_sst2(sst2):
    attack, poisoned = book.poison(splits=sst2, name="badnets")
    assert poisoned.poison_count == round(attack.config.poison_rate * len(sst2.train))
    table = book.side_by_side(splits=sst2, poisoned=poisoned, k=3)
    assert len(table) == 3 and set(table["new label"]) == {"positive"}
    assert book.paraphrase_aligned(dataset="sst2", name="synbkd")
    assert not book.paraphrase_aligned(dataset="olid", name="synbkd")
    assert book.words("It's a CF film!") == ["it's", "a", "cf", "film"]
    stealth = book.stealth(splits=sst2, names=["badnets"])
    assert len(stealth) == poisoned.poison_count and (stealth["words added"] == 1).all()


def test_pca_2d_and_cls_states(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rng = np.random.default_rng(0)
    states = rng.normal(size=(30, 5)) * np.array([10, 3, 0.1, 0.1, 0.1])
    xy = book.pca_2d(states=states)
    assert xy.shape == (30, 2) and np.allclose(xy.mean(0), 0) and xy[:, 0].var() > xy[:, 1].var()
    folder = tiny_model(tmp_path / "tiny")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    got = book.cls_states(model=model, tokenizer=tokenizer, texts=["a fine film", "dull"])
    assert got.shape == (2, 32)


def test_punish_terms_add_up_to_the_negated_library_loss():
    from bedkd_core.defenses.bedkd import distillation_loss

    torch.manual_seed(0)
    args = dict(student_logits=torch.randn(4, 2), teacher_logits=torch.randn(4, 2),
                student_hidden=torch.randn(4, 3, 8), teacher_hidden=torch.randn(4, 3, 8),
                labels=torch.tensor([0, 1, 1, 0]), temperature=2.5, alpha=0.3)
    terms = book.punish_terms(**args)
    assert terms["L"] == pytest.approx(-distillation_loss(**args, sign=-1).item(), rel=1e-5)
    assert terms["L"] == pytest.approx(terms["a·CE"] + terms["(1-a)·KL"] + terms["(1-a)·MSE"])


def test_head_and_check_setup_show_no_path(sst2):
    assert len(book.head(rows=sst2.test, n=5)) == 5 and book.head(rows=sst2.test, n=None) is sst2.test
    assert book.check_setup() is None
