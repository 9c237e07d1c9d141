from otter.test_files import test_case

OK_FORMAT = False

name = "identify_poisoned"
points = 11

@test_case(points=1, hidden=False)
def test_returns_rows_and_target(identify_poisoned):
    import numpy as np
    from bedkd_core.grading import fixtures

    data = fixtures.suspect_set("sst2", n=100, seed=0, target=1,
                                n_poisoned=15)
    out = identify_poisoned(**data, tau=0.1, n_rows=8, num_classes=2)
    assert isinstance(out, dict) and sorted(out) == ["rows", "target"], (
        "return a dict with the keys 'rows' and 'target'")
    rows = np.asarray(out["rows"])
    assert rows.ndim == 1 and len(rows) <= 8, "at most n_rows row indices"
    assert out["target"] is None or isinstance(out["target"], int), (
        "target is a Python int or None")
@test_case(points=3, hidden=False)
def test_matches_the_reference_on_sst2(identify_poisoned):
    from bedkd_core.grading import fixtures

    import numpy as np

    def problem(got, want, what):
        if not isinstance(got, dict) or sorted(got) != ["rows", "target"]:
            return f"{what}: return a dict with the keys 'rows' and 'target'"
        target = got["target"]
        if want["target"] is None and target is not None:
            return (f"{what}: inferred target {target}, but no class has a "
                    "positive excess A_c - eps_c N_c: return None")
        if want["target"] is not None and target != want["target"]:
            return (f"{what}: inferred target {target}, not the class with "
                    "the largest excess A_c - eps_c N_c")
        rows = np.asarray(got["rows"])
        if rows.ndim != 1 or (len(rows) and not np.issubdtype(
                rows.dtype, np.integer)):
            return f"{what}: rows must be a 1-d array of row indices"
        if len(rows) != len(want["rows"]):
            return (f"{what}: {len(rows)} rows returned, expected "
                    f"{len(want['rows'])} (at most n_rows candidates)")
        if set(rows.tolist()) != set(want["rows"].tolist()):
            return (f"{what}: other rows than the rule picks (candidates: "
                    "s < tau, predicted as their label, of the target class)")
        if not np.array_equal(rows, want["rows"]):
            return (f"{what}: the right rows in the wrong order (lowest score"
                    " first, equal scores in row order)")
        return None


    data = fixtures.suspect_set("sst2", n=100, seed=0, target=1,
                                n_poisoned=15)
    for tau, n_rows in ((0.1, 8), (0.2, 100)):
        want = fixtures.identify_reference(**data, tau=tau, n_rows=n_rows,
                                           num_classes=2)
        got = identify_poisoned(**data, tau=tau, n_rows=n_rows,
                                num_classes=2)
        message = problem(got, want, f"SST-2, tau = {tau}, n_rows = {n_rows}")
        assert message is None, message
