from otter.test_files import test_case

OK_FORMAT = False

name = "akd_train_head"
points = 8

@test_case(points=1, hidden=False)
def test_akd_train_head_returns_a_head_and_one_loss_per_batch(
        akd_train_head):
    import torch
    from bedkd_core.grading import akd_fixtures

    case = akd_fixtures.akd_head_rows("sst2", seed=0)
    got = akd_train_head(**{k: v.clone() for k, v in case.items()},
                         epochs=1, batch_size=8, temperature=2.5,
                         alpha=0.3, bound=3.0, learning_rate=1e-2)
    assert isinstance(got, dict), (
        f"akd_train_head returned {type(got).__name__}: return a dict "
        "with keys 'weight', 'bias' and 'losses'")
    assert {"weight", "bias", "losses"} <= set(got), (
        f"the dict has keys {sorted(got)}: it needs 'weight', 'bias' and "
        "'losses'")
    for name in ("weight", "bias"):
        shape = tuple(torch.as_tensor(got[name]).shape)
        assert shape == tuple(case[name].shape), (
            f"{name} has shape {shape}, expected that of the input {name}")
    assert len(got["losses"]) == 7, (
        f"{len(got['losses'])} losses for 40 trust rows and 12 punish rows "
        "in batches of 8, one epoch: log one loss per batch run")
    assert all(isinstance(x, float) for x in got["losses"]), (
        "log each loss as a Python float (tensor.item())")
@test_case(points=2, hidden=False)
def test_akd_train_head_matches_the_reference_on_sst2(akd_train_head):
    from bedkd_core.grading import akd_fixtures

    case = akd_fixtures.akd_head_rows("sst2", seed=0)
    settings = dict(batch_size=8, temperature=2.5, alpha=0.3,
                    learning_rate=1e-2)
    binding = akd_fixtures.binding_bound(case, epochs=3, **settings)
    for epochs, bound in ((1, 3.0), (3, binding)):
        got = akd_train_head(**{k: v.clone() for k, v in case.items()},
                             epochs=epochs, bound=bound, **settings)
        want = akd_fixtures.reference_akd_head(**case, epochs=epochs,
                                           bound=bound, **settings)
        problem = akd_fixtures.akd_head_mistake(got, want, n_trust=5,
                                            n_punish=2, bound=bound)
        assert problem is None, (
            f"SST-2, {epochs} epoch(s), bound {bound:.4f}: {problem}")
