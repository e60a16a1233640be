"""The torch.optim contract, in the spirit of PyTorch's own optimizer tests (test/test_optim.py)."""

import copy
import io
import warnings

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, WeightsError, load_weights


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def loss_of(model: torch.nn.Module, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=gen, dtype=next(model.parameters()).dtype)
    return model(x).pow(2).mean()


def train(model, optimizer, steps, start=0):
    for i in range(start, start + steps):
        optimizer.zero_grad()
        loss_of(model, i).backward()
        optimizer.step()


def test_step_adds_the_network_output(network):
    param = torch.nn.Parameter(torch.randn(4, 3))
    param.grad = torch.randn(4, 3)
    before = param.detach().clone()
    LearnedOptimizer([param], weights=network, lr=0.5).step()
    update, _ = network(param.grad.reshape(-1), network.initial_state(12))
    torch.testing.assert_close(param.detach(), before + 0.5 * update.view(4, 3))


def test_zero_lr_is_an_exact_no_op(network):
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    train(model, LearnedOptimizer(model.parameters(), weights=network, lr=0.0), 3)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_weight_decay_is_decoupled(network):
    param = torch.nn.Parameter(torch.randn(5))
    param.grad = torch.randn(5)
    before = param.detach().clone()
    LearnedOptimizer([param], weights=network, lr=0.5, weight_decay=0.1).step()
    update, _ = network(param.grad, network.initial_state(5))
    torch.testing.assert_close(param.detach(), before * (1 - 0.05) + 0.5 * update)


def test_maximize_equals_minimizing_the_negation(network):
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    grad = torch.randn(4)
    a.grad, b.grad = grad.clone(), -grad
    LearnedOptimizer([a], weights=network, maximize=True).step()
    LearnedOptimizer([b], weights=network).step()
    assert torch.equal(a, b)


def test_closure_runs_with_grad_enabled_and_loss_is_returned(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)

    def closure():
        optimizer.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert optimizer.step() is None


def test_params_without_grad_are_untouched_and_stateless(network):
    used, unused = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    used.grad = torch.randn(3)
    before = unused.detach().clone()
    optimizer = LearnedOptimizer([used, unused], weights=network)
    optimizer.step()
    assert torch.equal(unused, before) and len(optimizer.state[unused]) == 0
    assert set(optimizer.state[used]) == {"step", "lstm_state"} and optimizer.state[used]["step"] == 1


def test_param_groups_with_own_lr_and_add_param_group(network):
    a, b, c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    optimizer = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.0}], weights=network)
    optimizer.add_param_group({"params": [c], "weight_decay": 0.5})
    assert optimizer.param_groups[2]["lr"] == 1.0 and optimizer.param_groups[2]["weight_decay"] == 0.5
    before_b = b.detach().clone()
    for p in (a, b, c):
        p.grad = torch.randn(3)
    optimizer.step()
    assert torch.equal(b, before_b)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        optimizer.add_param_group({"params": [a]})


def test_named_parameters_give_param_names_in_state_dict(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.named_parameters(), weights=network)
    train(model, optimizer, 1)
    assert optimizer.state_dict()["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]


def test_step_and_state_dict_hooks_run(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    optimizer.register_state_dict_post_hook(lambda opt, sd: calls.append("state_dict"))
    optimizer.register_load_state_dict_post_hook(lambda opt: calls.append("load"))
    train(model, optimizer, 1)
    optimizer.load_state_dict(optimizer.state_dict())
    assert calls == ["pre", "post", "state_dict", "load"]


def test_lr_scheduler_acts_through_group_lr(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train(model, optimizer, 1)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.5
    reference = make_model()
    ref_optimizer = LearnedOptimizer(reference.parameters(), weights=network)
    train(reference, ref_optimizer, 1)
    ref_optimizer.param_groups[0]["lr"] = 0.5
    train(model, optimizer, 1, start=1)
    train(reference, ref_optimizer, 1, start=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_deepcopy_continues_identically(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, 2)
    model_copy = copy.deepcopy(model)
    optimizer_copy = LearnedOptimizer(model_copy.parameters(), weights=network)
    optimizer_copy.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    cloned = copy.deepcopy(optimizer)
    assert cloned.network is not optimizer.network and cloned.state_dict()["weights_identity"]
    train(model, optimizer, 2, start=2)
    train(model_copy, optimizer_copy, 2, start=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model_copy.parameters()))


def test_repr_lists_group_settings(network):
    text = repr(LearnedOptimizer([torch.nn.Parameter(torch.ones(1))], weights=network, lr=0.3))
    assert text.startswith("LearnedOptimizer (") and "lr: 0.3" in text and "weight_decay: 0.0" in text


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_low_and_high_precision_params_keep_dtype_with_fp32_state(network, dtype):
    model = make_model().to(dtype)
    reference = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    ref_optimizer = LearnedOptimizer(reference.parameters(), weights=network)
    for i in range(3):
        for m, opt in ((model, optimizer), (reference, ref_optimizer)):
            opt.zero_grad()
            for p in m.parameters():
                p.grad = torch.full_like(p, 0.01 * (i + 1)) + 1e-3 * torch.arange(p.numel()).view_as(p).to(p.dtype)
            opt.step()
    for p, ref in zip(model.parameters(), reference.parameters()):
        assert p.dtype == dtype
        assert optimizer.state[p]["lstm_state"].dtype == torch.float32
        tolerance = 1e-6 if dtype == torch.float64 else 2e-2
        torch.testing.assert_close(p.float(), ref.detach(), atol=tolerance, rtol=tolerance)


def test_complex_params_are_stepped_as_real_coordinates(network):
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    x = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    z.grad = torch.randn(3, dtype=torch.complex64)
    x.grad = torch.view_as_real(z.grad).clone()
    LearnedOptimizer([z], weights=network).step()
    LearnedOptimizer([x], weights=network).step()
    assert torch.equal(torch.view_as_real(z.detach()), x.detach())


def test_bad_inputs_fail_clearly(network):
    with pytest.raises(ValueError, match="empty parameter list"):
        LearnedOptimizer([], weights=network)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        LearnedOptimizer(torch.nn.Parameter(torch.ones(2)), weights=network)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=network, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=network, weight_decay=-1.0)
    sparse = torch.nn.Parameter(torch.ones(3))
    sparse.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LearnedOptimizer([sparse], weights=network).step()


def test_unknown_weights_name_is_named_with_alternatives():
    with pytest.raises(WeightsError, match="no-such-weights"):
        LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights="no-such-weights")


def test_weights_from_a_saved_directory(tmp_path, network):
    network.save_pretrained(tmp_path)
    loaded = load_weights(tmp_path)
    assert loaded.weights_identity.sha256 == load_weights(network).weights_identity.sha256
    model_a, model_b = make_model(), make_model()
    train(model_a, LearnedOptimizer(model_a.parameters(), weights=network), 3)
    train(model_b, LearnedOptimizer(model_b.parameters(), weights=str(tmp_path)), 3)
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


def test_non_finite_gradient_coordinates_are_skipped_with_one_warning(network):
    param = torch.nn.Parameter(torch.randn(4))
    optimizer = LearnedOptimizer([param], weights=network)
    param.grad = torch.tensor([0.1, float("nan"), float("inf"), -0.2])
    before = param.detach().clone()
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        optimizer.step()
    state = optimizer.state[param]["lstm_state"]
    assert torch.equal(param[1:3], before[1:3]) and torch.all(state[1:3] == 0)
    assert torch.all(param[[0, 3]] != before[[0, 3]]) and torch.all(state[[0, 3]] != 0)
    assert torch.isfinite(param).all() and torch.isfinite(state).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()


def test_reset_state_starts_a_new_optimisation(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, 2)
    optimizer.reset_state()
    assert len(optimizer.state) == 0
    snapshot = copy.deepcopy(model)
    train(model, optimizer, 2)
    train(snapshot, LearnedOptimizer(snapshot.parameters(), weights=network), 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshot.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_through_torch_save_is_bit_exact(network, dtype):
    model = make_model().to(dtype)
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, 3, start=3)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = make_model(seed=99).to(dtype)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = LearnedOptimizer(resumed.parameters(), weights=network)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    for p in resumed.parameters():
        assert resumed_optimizer.state[p]["lstm_state"].dtype == torch.float32
    train(resumed, resumed_optimizer, 3, start=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def test_loading_state_of_other_weights_warns(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, 1)
    other = LearnedOptimizer(model.parameters(), weights=CoordinatewiseLSTM())
    with pytest.warns(UserWarning, match="means nothing to another network"):
        other.load_state_dict(optimizer.state_dict())


def test_coordinatewise_independence(network):
    """A parameter's trajectory does not depend on which other parameters share the optimizer."""
    torch.manual_seed(0)
    alone = torch.nn.Parameter(torch.randn(7))
    together = torch.nn.Parameter(alone.detach().clone())
    others = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(11))]
    opt_alone = LearnedOptimizer([alone], weights=network)
    opt_together = LearnedOptimizer([others[0], together, others[1]], weights=network)
    for _step in range(5):
        grad = torch.randn(7)
        alone.grad, together.grad = grad.clone(), grad.clone()
        for p in others:
            p.grad = torch.randn_like(p)
        opt_alone.step()
        opt_together.step()
    torch.testing.assert_close(alone.detach(), together.detach(), rtol=0, atol=1e-6)


def test_reference_makes_one_network_call_per_group(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network, implementation="reference")
    calls = []
    optimizer.network.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].numel()))
    train(model, optimizer, 1)
    assert calls == [sum(p.numel() for p in model.parameters())]


def test_loading_state_of_another_shape_fails_naming_the_parameter(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, 1)
    smaller = LearnedOptimizer(model.parameters(), weights=CoordinatewiseLSTM(hidden_size=5))
    with pytest.raises(ValueError, match="parameter 0 has shape"), pytest.warns(UserWarning):
        smaller.load_state_dict(optimizer.state_dict())


def test_non_contiguous_gradients_step_like_contiguous_ones(network):
    a = torch.nn.Parameter(torch.randn(6))
    b = torch.nn.Parameter(a.detach().clone())
    grad = torch.randn(12)
    a.grad, b.grad = grad[::2], grad[::2].clone()
    assert not a.grad.is_contiguous()
    LearnedOptimizer([a], weights=network).step()
    LearnedOptimizer([b], weights=network).step()
    assert torch.equal(a, b)


def _trained(network, steps: int = 1):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    train(model, optimizer, steps)
    return model, optimizer


def _assert_refused_and_unchanged(optimizer, state_dict, error, match):
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(error, match=match):
        optimizer.load_state_dict(state_dict)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for key, entry in before["state"].items():
        assert all(torch.equal(value, after["state"][key][name]) for name, value in entry.items())


def test_another_optimizers_state_dict_is_refused_before_anything_changes(network):
    model, optimizer = _trained(network)
    adam = torch.optim.Adam(model.parameters())
    loss_of(model, 0).backward()
    adam.step()
    _assert_refused_and_unchanged(
        optimizer, adam.state_dict(), ValueError, "parameter 0 has keys .*'exp_avg'.*not 'step' and 'lstm_state'"
    )
    train(model, optimizer, 1, start=1)


@pytest.mark.parametrize("other", [torch.optim.Adam, torch.optim.SGD, torch.optim.RMSprop])
def test_a_fresh_optimizers_state_dict_is_refused_by_its_options(network, other):
    model, optimizer = _trained(network)
    fresh = other(model.parameters(), lr=1e-3)  # no per-parameter state yet: only its groups tell
    _assert_refused_and_unchanged(optimizer, fresh.state_dict(), ValueError, "options .* of another torch.optim")
    ours_without_identity = optimizer.state_dict()
    del ours_without_identity["weights_identity"]  # as torch.distributed.checkpoint returns it
    LearnedOptimizer(model.parameters(), weights=network).load_state_dict(ours_without_identity)


def test_incomplete_or_mistyped_state_dicts_are_refused_naming_what_is_wrong(network):
    _, optimizer = _trained(network)
    good = optimizer.state_dict()

    def edited(edit):
        state_dict = copy.deepcopy(good)
        edit(state_dict)
        return state_dict

    cases = [
        (lambda sd: sd.pop("state"), "has no 'state'"),
        (lambda sd: sd.pop("param_groups"), "has no 'param_groups'"),
        (lambda sd: sd["param_groups"][0].pop("lr"), "parameter group 0 has no 'lr'"),
        (lambda sd: sd["param_groups"][0].update(lr=float("nan")), "'lr' must be a finite non-negative number"),
        (lambda sd: sd["param_groups"][0].update(weight_decay="0"), "'weight_decay' must be a finite non-negative"),
        (lambda sd: sd["param_groups"][0].update(maximize=1), "'maximize' must be True or False"),
        (lambda sd: sd["param_groups"].append(sd["param_groups"][0]), "has 2 parameter groups, this optimizer 1"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), "group 0 has 3 parameters in the state dict, 4 in this"),
        (lambda sd: sd["state"].update({99: sd["state"][0]}), r"entries \[99\] for no parameter"),
        (lambda sd: sd["state"][1].pop("step"), "parameter 1 has keys \\['lstm_state'\\], not 'step'"),
        (lambda sd: sd["state"][1].update(step=3), "parameter 1: 'step' must be a 0-dimensional floating-point"),
        (lambda sd: sd["state"][2].update(lstm_state=sd["state"][2]["lstm_state"].int()), "parameter 2: 'lstm_"),
        (lambda sd: sd["state"][3].update(lstm_state=[0.0]), "'lstm_state' must be a floating-point tensor"),
        (lambda sd: sd.update(weights_identity="x"), "'weights_identity'\\] must be a dict"),
    ]
    for edit, match in cases:
        _assert_refused_and_unchanged(optimizer, edited(edit), ValueError, match)
    _assert_refused_and_unchanged(optimizer, [good], TypeError, "expected a dict")


@pytest.mark.parametrize(
    ("key", "bad"), [("lstm_state", float("nan")), ("lstm_state", float("inf")), ("step", float("inf"))]
)
def test_non_finite_saved_state_is_refused(network, key, bad):
    model, optimizer = _trained(network, steps=2)
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][2][key].view(-1)[0] = bad
    fresh = LearnedOptimizer(model.parameters(), weights=network)
    with pytest.raises(ValueError, match=r"parameter 2 holds NaN, infinite.*delete state_dict\['state'\]\[2\]"):
        fresh.load_state_dict(state_dict)
    assert len(fresh.state) == 0


@pytest.mark.parametrize("implementation", ["auto", "reference"])
def test_integer_parameters_are_refused_naming_dtype_and_index(network, implementation):
    model = make_model()
    counts = torch.arange(3)
    counts.grad = torch.ones(3, dtype=torch.int64)
    optimizer = LearnedOptimizer(
        [{"params": list(model.parameters())}, {"params": [counts]}], weights=network, implementation=implementation
    )
    loss_of(model, 0).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="parameter 4 has dtype torch.int64; only floating-point and complex"):
        optimizer.step()
    assert torch.equal(counts, torch.arange(3))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the other group was not stepped
    named = LearnedOptimizer([("weight", torch.nn.Parameter(torch.ones(2))), ("counts", counts)], weights=network)
    with pytest.raises(TypeError, match="parameter 1 \\('counts'\\) has dtype torch.int64"):
        named.step()
