from otter.test_files import test_case

OK_FORMAT = False

name = "agreement_score"
points = 10

@test_case(points=1, hidden=False)
def test_returns_the_five_arrays(agreement_score):
    import numpy as np
    from bedkd_core.grading import fixtures

    texts, _ = fixtures.sentences("sst2", 8, seed=5)
    t, d = fixtures.head_logits(texts, num_classes=2)
    out = agreement_score(teacher_logits=t, dmm_logits=d)
    keys = ["dmm_pred", "dmm_prob", "score", "teacher_pred", "teacher_prob"]
    assert isinstance(out, dict) and sorted(out) == keys, (
        f"return a dict with exactly the keys {keys}")
    assert all(isinstance(v, np.ndarray) for v in out.values()), (
        "every value must be a numpy array")
    assert out["score"].shape == (8,), "one score per row"
    assert out["teacher_prob"].shape == out["dmm_prob"].shape == (8, 2), (
        "probabilities have the logits' shape (n, C)")
@test_case(points=3, hidden=False)
def test_matches_the_reference_on_sst2(agreement_score):
    from bedkd_core.grading import fixtures

    import numpy as np

    def problem(got, want, what):
        keys = ["dmm_pred", "dmm_prob", "score", "teacher_pred",
                "teacher_prob"]
        if not isinstance(got, dict) or sorted(got) != keys:
            return f"{what}: return a dict with exactly the keys {keys}"
        n, k = want["teacher_prob"].shape
        for name in ("teacher_prob", "dmm_prob"):
            value = np.asarray(got[name], dtype=np.float64)
            if value.shape != (n, k):
                return (f"{what}: {name} has shape {value.shape} for {n} rows"
                        f" of {k} logits, expected ({n}, {k})")
            if not np.isfinite(value).all():
                return (f"{what}: {name} holds inf or nan: the softmax "
                        "overflows on large logits")
            if not np.allclose(value, want[name], atol=1e-5):
                rows = np.allclose(value.sum(axis=0), 1, atol=1e-4)
                hint = (" (it sums to 1 over the rows: take the softmax over"
                        " the classes, axis 1)" if rows else "")
                return f"{what}: {name} is not the softmax of the logits{hint}"
        for name in ("teacher_pred", "dmm_pred"):
            value = np.asarray(got[name])
            if value.shape != (n,) or not np.issubdtype(value.dtype,
                                                       np.integer):
                return f"{what}: {name} must be {n} integer class indices"
            if not np.array_equal(value, want[name]):
                return f"{what}: {name} is not the arg-max class of each row"
        score = np.asarray(got["score"], dtype=np.float64)
        if score.shape != (n,):
            return (f"{what}: score has shape {score.shape}, expected ({n},):"
                    " one score per row, the mean over the class axis")
        if np.allclose(score, want["score"], atol=1e-5):
            return None
        d = want["teacher_prob"].astype(np.float64) - want["dmm_prob"]
        mistakes = {"the sum over classes instead of the mean":
                    np.abs(d).sum(1),
                    "the largest class difference instead of the mean":
                    np.abs(d).max(1),
                    "the mean of signed differences (no absolute value)":
                    d.mean(1),
                    "the mean of squared differences": (d ** 2).mean(1)}
        for mistake, value in mistakes.items():
            if np.allclose(score, value, atol=1e-5):
                return f"{what}: score looks like {mistake}"
        row = int(np.argmax(np.abs(score - want["score"])))
        return f"{what}: score is wrong (row {row} is furthest off)"

    CASES = [("sst2", 2, 32, 5, 1.0)]
    for dataset, k, n, seed, scale in CASES:
        texts, _ = fixtures.sentences(dataset, n, seed=seed)
        t, d = fixtures.head_logits(texts, num_classes=k, scale=scale)
        want = fixtures.agreement_reference(texts, num_classes=k, scale=scale)
        got = agreement_score(teacher_logits=t, dmm_logits=d)
        message = problem(got, want, f"{n} {dataset} rows (C = {k})")
        assert message is None, message
