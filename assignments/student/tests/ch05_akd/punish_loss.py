from otter.test_files import test_case

OK_FORMAT = False

name = "punish_loss"
points = 8

@test_case(points=1, hidden=False)
def test_punish_loss_returns_a_scalar_with_a_gradient(punish_loss):
    import torch
    from bedkd_core.grading import calls, fixtures

    batch = fixtures.distillation_batch("sst2")
    value, grads = calls.value_and_grad(
        punish_loss, wrt=("student_logits",),
        **{k: v.clone() for k, v in batch.items()},
        temperature=2.5, alpha=0.3, bound=3.0)
    assert isinstance(value, torch.Tensor), (
        f"punish_loss returned {type(value).__name__}: return a torch "
        "tensor, so that it can be back-propagated")
    assert value.dim() == 0, (
        f"punish_loss returned a tensor of shape {tuple(value.shape)}: "
        "return a 0-dim (scalar) tensor")
    assert grads["student_logits"] is not None, (
        "no gradient reaches the student's logits: compute the loss in "
        "torch from the tensors you are given, without detaching them")
@test_case(points=2, hidden=False)
def test_punish_loss_matches_the_reference_on_sst2(punish_loss):
    import torch
    from bedkd_core.grading import akd_fixtures, fixtures

    batch = fixtures.distillation_batch("sst2")
    for t, a, bound in ((2.5, 0.3, 3.0), (0.5, 0.7, 0.5), (4.0, 0.0, 3.0)):
        got = punish_loss(**{k: v.clone() for k, v in batch.items()},
                          temperature=t, alpha=a, bound=bound)
        got = torch.as_tensor(got).detach().reshape(-1)
        want = akd_fixtures.punish_loss_reference(
            batch, temperature=t, alpha=a, bound=bound)
        if got.numel() == 1 and akd_fixtures.close(got[0], want):
            continue
        mistake = akd_fixtures.punish_loss_mistake(
            batch, got[0] if got.numel() == 1 else got, temperature=t,
            alpha=a, bound=bound)
        raise AssertionError(
            f"wrong value on 16 SST-2 sentences at T={t}, alpha={a}, "
            f"bound={bound}" + (f": looks like {mistake}" if mistake else
                                ": check each term's reduction"))
@test_case(points=1, hidden=False)
def test_punish_loss_pushes_the_student_away_on_sst2(punish_loss):
    import torch
    from bedkd_core.defenses.bedkd import distillation_loss
    from bedkd_core.grading import calls, fixtures

    batch = fixtures.distillation_batch("sst2")
    wrt = ("student_logits", "student_hidden")
    _, grads = calls.value_and_grad(
        punish_loss, wrt=wrt, **{k: v.clone() for k, v in batch.items()},
        temperature=2.5, alpha=0.3, bound=3.0)
    leaves = {k: batch[k].clone().requires_grad_(True) for k in wrt}
    loss = distillation_loss(**{**batch, **leaves}, temperature=2.5,
                             alpha=0.3)
    wants = torch.autograd.grad(loss, [leaves[k] for k in wrt])
    for name, want in zip(wrt, wants):
        got = grads[name]
        assert got is not None, f"the loss does not depend on {name}"
        got, want = got.double().flatten(), want.double().flatten()
        assert float(got @ want) < 0, (
            f"descending your loss moves {name} toward the teacher's: "
            "the punish pass must push the student away from it")
        error = float((got + want).norm() / want.norm())
        assert error < 1e-4, (
            f"the gradient w.r.t. {name} points away from the teacher but "
            f"is not minus the gradient of L (relative error {error:.2g})")
