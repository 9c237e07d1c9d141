from otter.test_files import test_case

OK_FORMAT = False

name = "strip_entropy"
points = 4

@test_case(points=None, hidden=False)
def test_one_entropy_per_row_matches_strip_on_sst2(strip_entropy):
    import numpy as np
    from bedkd_core.defenses.strip import mean_entropy
    from bedkd_core.grading import fixtures

    probs = fixtures.strip_copies("sst2", 8, seed=0)
    got = np.asarray(strip_entropy(probs=probs.copy()), dtype=float)
    assert got.shape == (8,), (
        f"expected one score per row, shape (8,), got shape {got.shape}")
    assert np.allclose(got, mean_entropy(probs), atol=1e-5), (
        "the scores differ from STRIP's on real SST-2 copies: average the "
        "entropy (natural log) of each copy's prediction over the copies")
@test_case(points=None, hidden=False)
def test_certain_and_uniform_predictions(strip_entropy):
    import numpy as np

    certain = np.zeros((2, 3, 4))
    certain[..., 1] = 1.0
    got = np.asarray(strip_entropy(probs=certain), dtype=float)
    assert got.shape == (2,) and np.all(np.isfinite(got)), (
        "a prediction with probabilities of exactly 0 gives a score that "
        "is not finite: a zero probability must contribute 0")
    assert np.allclose(got, 0.0, atol=1e-6), (
        "a certain prediction (one class at probability 1) has entropy 0")
    uniform = np.full((3, 2, 4), 0.25)
    got = np.asarray(strip_entropy(probs=uniform), dtype=float)
    assert np.allclose(got, np.log(4), atol=1e-6), (
        "a uniform prediction over K classes has entropy ln K (nats)")
