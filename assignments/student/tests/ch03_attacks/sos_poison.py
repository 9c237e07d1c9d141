from otter.test_files import test_case

OK_FORMAT = False

name = "sos_poison"
points = 11

@test_case(points=1, hidden=False)
def test_returns_the_documented_dict(sos_poison):
    from bedkd_core.grading import fixtures

    texts, labels = fixtures.train_rows("sst2", 50, seed=4)
    out = sos_poison(texts=list(texts), labels=list(labels),
                     trigger_words=["friends", "weekend", "store"],
                     target_label=1, poison_rate=0.1, negative_rate=0.2,
                     seed=0)
    keys = ["labels", "negative_labels", "negative_texts", "poisoned_rows",
            "texts"]
    assert isinstance(out, dict) and sorted(out) == keys, (
        f"return a dict with exactly the keys {keys}")
    assert len(out["texts"]) == len(out["labels"]) == 50, (
        "texts and labels hold the n rows after poisoning")
    assert len(out["poisoned_rows"]) == 5, "m = round(0.1 * 50) = 5 rows"
    assert len(out["negative_texts"]) == len(out["negative_labels"]) == 10, (
        "m_- = round(0.2 * 50) = 10 negative rows")
    assert all(isinstance(t, str) for t in out["texts"] + out[
        "negative_texts"]), "texts must be str"
@test_case(points=4, hidden=False)
def test_matches_sos_on_sst2(sos_poison):
    from bedkd_core.grading import fixtures

    def problem(got, want, what):
        keys = ["texts", "labels", "poisoned_rows", "negative_texts",
                "negative_labels"]
        if not isinstance(got, dict) or sorted(got) != sorted(keys):
            return f"{what}: return a dict with exactly the keys {keys}"
        for key in keys:
            if len(got[key]) != len(want[key]):
                return (f"{what}: {key} has {len(got[key])} entries, "
                        f"expected {len(want[key])}")
        if [int(i) for i in got["poisoned_rows"]] != want["poisoned_rows"]:
            return (f"{what}: other poisoned rows than the rule draws (sorted "
                    "sample of the rows not labelled y_t)")
        if [int(y) for y in got["labels"]] != want["labels"]:
            return f"{what}: wrong labels after poisoning"
        for i, (g, w) in enumerate(zip(got["texts"], want["texts"])):
            if g != w:
                kind = "poisoned" if i in want["poisoned_rows"] else "clean"
                return (f"{what}: the text of {kind} row {i} differs from "
                        "the rule (a clean row must stay as it is)")
        if [int(y) for y in got["negative_labels"]] != want[
                "negative_labels"]:
            return (f"{what}: wrong negative labels (each keeps its source "
                    "row's label)")
        for j, (g, w) in enumerate(zip(got["negative_texts"],
                                       want["negative_texts"])):
            if g != w:
                return (f"{what}: negative row {j} differs from the rule "
                        "(source rows, subset order or positions)")
        return None


    texts, labels = fixtures.train_rows("sst2", 200, seed=4)
    args = dict(trigger_words=["friends", "weekend", "store"], target_label=1,
                poison_rate=0.1, negative_rate=0.1, seed=0)
    want = fixtures.sos_reference(texts=texts, labels=labels, num_classes=2,
                                  **args)
    got = sos_poison(texts=list(texts), labels=list(labels), **args)
    message = problem(got, want, "200 SST-2 rows, the default SOS words")
    assert message is None, message
