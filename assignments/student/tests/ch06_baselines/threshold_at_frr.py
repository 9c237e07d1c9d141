from otter.test_files import test_case

OK_FORMAT = False

name = "threshold_at_frr"
points = 4

@test_case(points=None, hidden=False)
def test_matches_strip_on_real_sst2_scores(threshold_at_frr):
    import numpy as np
    from bedkd_core.defenses.strip import mean_entropy, threshold_at_frr as ref
    from bedkd_core.grading import fixtures

    scores = mean_entropy(fixtures.strip_copies("sst2", 32, seed=0))
    for frr in (0.0, 0.05, 0.1, 0.25, 0.5):
        got = threshold_at_frr(scores=scores.copy(), frr=frr)
        assert isinstance(got, float), (
            f"returned {type(got).__name__}, expected a float")
        below = float(np.mean(scores < got))
        assert np.isclose(got, ref(scores, frr)), (
            f"frr={frr} on 32 real SST-2 scores: a share {below:.3f} of the "
            "scores falls strictly below your threshold; the threshold is "
            "the largest t with at most frr of the scores strictly below it")
@test_case(points=None, hidden=False)
def test_ties_and_unsorted_scores(threshold_at_frr):
    import numpy as np
    from bedkd_core.defenses.strip import threshold_at_frr as ref

    scores = [0.3, 0.1, 0.1, 0.1, 0.7, 0.2, 0.9, 0.1, 0.4, 0.5]
    for frr in (0.1, 0.3, 0.45):
        got = threshold_at_frr(scores=np.array(scores), frr=frr)
        assert np.isclose(float(got), ref(np.array(scores), frr)), (
            f"frr={frr} on unsorted scores with ties: rejection is for "
            "scores strictly below the threshold, so tied scores are "
            "rejected together or not at all")
