"""``lr`` and the weights' ``nominal_lr``: the lr a user passes to Adam either works or is refused at construction."""

import copy
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, load_weights
from learned_torch_optim.optimizer import LR_RANGE

GENERAL = {**load_weights("l2l-general").config}


def general(nominal_lr: float) -> CoordinatewiseLSTM:
    network = CoordinatewiseLSTM(**{**GENERAL, "nominal_lr": nominal_lr})
    network.load_state_dict(load_weights("l2l-general").state_dict())
    return network


def stepped(network: CoordinatewiseLSTM, **options) -> torch.Tensor:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(50))
    optimizer = LearnedOptimizer([param], weights=network, **options)
    for _ in range(3):
        param.grad = torch.randn(50)
        optimizer.step()
    return param.detach()


def test_the_step_is_the_update_times_lr_over_nominal_lr():
    as_factor, in_adam_units = general(1.0), general(1e-3)
    assert "nominal_lr" not in as_factor.config and in_adam_units.config["nominal_lr"] == 1e-3
    torch.testing.assert_close(stepped(in_adam_units, lr=1e-3), stepped(as_factor, lr=1.0), rtol=0, atol=0)
    torch.testing.assert_close(stepped(in_adam_units), stepped(as_factor))
    torch.testing.assert_close(stepped(in_adam_units, lr=5e-4), stepped(as_factor, lr=0.5))
    # weight decay keeps AdamW's meaning, theta *= 1 - lr * weight_decay, with lr in the user's units
    torch.testing.assert_close(
        stepped(in_adam_units, lr=1e-3, weight_decay=10.0), stepped(as_factor, lr=1.0, weight_decay=1e-2)
    )


def test_the_default_lr_is_each_groups_nominal_lr():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = LearnedOptimizer([{"params": [a]}, {"params": [b], "weights": general(1e-3)}], weights=general(1.0))
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 1e-3]
    given = LearnedOptimizer([{"params": [a]}, {"params": [b], "weights": general(1.0)}], weights=general(1.0), lr=0.5)
    assert [group["lr"] for group in given.param_groups] == [0.5, 0.5]


@pytest.mark.parametrize(
    "nominal_lr, refused, accepted", [(1.0, [1e-3, 1e-2, 100.0], [0.0, 0.1, 3.0]), (1e-3, [1.0, 0.1], [3e-4, 1e-2])]
)
def test_an_lr_in_the_other_unit_is_refused_at_construction(nominal_lr, refused, accepted):
    network = general(nominal_lr)
    for lr in refused:
        with pytest.raises(ValueError, match=rf"lr={lr:g} \(parameter group 0\).*nominal_lr={nominal_lr:g}"):
            LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=network, lr=lr)
        with pytest.raises(ValueError, match=r"parameter group 1"):
            LearnedOptimizer(
                [
                    {"params": [torch.nn.Parameter(torch.ones(2))]},
                    {"params": [torch.nn.Parameter(torch.ones(2))], "lr": lr},
                ],
                weights=network,
            )
    for lr in accepted:
        LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=network, lr=lr)
    assert LR_RANGE == 30.0


def test_a_scheduler_may_take_lr_anywhere_after_construction():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = LearnedOptimizer([param], weights=general(1.0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1e-4)
    param.grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    optimizer.step()


@pytest.mark.parametrize("implementation", ["reference", "fused", "blocked"])
def test_a_network_with_lr_inputs_sees_how_far_lr_fell_below_its_largest_and_rose_above_its_first(implementation):
    torch.manual_seed(0)
    config = {**load_weights("l2l-general-v2").config, "lr_decay_input": True, "lr_warmup_input": True}
    network = CoordinatewiseLSTM(**config)
    factors = [0.2, 1.0, 0.5, 0.25, 2.0, 1.0]  # delta: 0, 0, 0.5, 0.75, 0, 0.5; rho: 0, 0.8, 0.8, 0.8, 0.9, 0.9
    grads = torch.randn(len(factors), 30)
    param = torch.nn.Parameter(torch.randn(30))
    expected, state = param.detach().clone(), network.initial_state(30)
    optimizer = LearnedOptimizer([param], weights=network, implementation=implementation)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factors[min(step, 5)])
    peak = 0.0
    for factor, grad in zip(factors, grads):
        peak = max(peak, factor)
        with torch.no_grad():
            update, state = network(grad, state, torch.tensor([1 - factor / peak, 1 - factors[0] / peak]))
        expected += factor * update
        param.grad = grad.clone()
        optimizer.step()
        scheduler.step()
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-7)
    group = optimizer.state_dict()["param_groups"][0]  # a checkpoint resumes them
    assert group["peak_lr"] == pytest.approx(2e-3) and group["first_lr"] == pytest.approx(2e-4)


def _warmup_network() -> CoordinatewiseLSTM:
    torch.manual_seed(0)
    config = load_weights("l2l-general-v2").config
    network = CoordinatewiseLSTM(**{**config, "lr_decay_input": True, "lr_warmup_input": True})
    with torch.no_grad():
        network.readout.weight[1, -2:] = torch.tensor([1.0, 2.0])  # the lr inputs move the step's magnitude
    return network


def _steps(optimizer: LearnedOptimizer, param: torch.nn.Parameter, lrs: list[float]) -> None:
    for lr, grad in zip(lrs, torch.randn(len(lrs), param.numel(), generator=torch.Generator().manual_seed(1))):
        optimizer.param_groups[0]["lr"] = lr
        param.grad = grad.clone()
        optimizer.step()


def test_reset_state_forgets_the_lrs_a_group_has_had():
    network, param = _warmup_network(), torch.nn.Parameter(torch.zeros(20))
    optimizer = LearnedOptimizer([param], weights=network)
    _steps(optimizer, param, [1e-3, 1e-3])
    optimizer.reset_state()
    param.data.zero_()
    _steps(optimizer, param, [1e-4, 3e-4, 1e-3])  # a warm-up, seen as one
    fresh = torch.nn.Parameter(torch.zeros(20))
    _steps(LearnedOptimizer([fresh], weights=network), fresh, [1e-4, 3e-4, 1e-3])
    assert torch.equal(param, fresh)


def test_a_checkpoint_without_first_lr_resumes_as_if_no_warm_up_was_seen():
    network, param = _warmup_network(), torch.nn.Parameter(torch.zeros(20))
    optimizer = LearnedOptimizer([param], weights=network)
    _steps(optimizer, param, [1e-3, 5e-4])
    saved = optimizer.state_dict()
    del saved["param_groups"][0]["first_lr"]  # written before the warm-up input existed
    resumed = LearnedOptimizer([param], weights=network)
    resumed.load_state_dict(saved)
    _steps(resumed, param, [2.5e-4])
    group = resumed.param_groups[0]
    assert group["first_lr"] == group["peak_lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("key, value", [("first_lr", float("nan")), ("peak_lr", -1.0), ("first_lr", "1e-3")])
def test_a_saved_group_with_a_bad_lr_history_is_refused(key, value):
    param = torch.nn.Parameter(torch.zeros(20))
    optimizer = LearnedOptimizer([param], weights=_warmup_network())
    saved = optimizer.state_dict()
    saved["param_groups"][0][key] = value
    with pytest.raises(ValueError, match=key):
        optimizer.load_state_dict(saved)


def _quickstart():
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_literal_swap_from_adam_on_the_quickstart_mlp():
    """``LearnedOptimizer(params, lr=1e-3)``, the lr given to Adam, on the quick start's MLP: the default weights
    (``l2l-general-v6``, ``nominal_lr = 1e-3``) train to within 10% of the final loss they reach at their default
    ``lr``, and well below the start."""
    quickstart = _quickstart()
    _, splits = quickstart.load_data(None)
    assert load_weights("default").nominal_lr == 1e-3
    runs = {}
    for lr in (None, 1e-3):
        model = quickstart.make_model(0)
        options = {} if lr is None else {"lr": lr}
        runs[lr] = quickstart.train(model, LearnedOptimizer(model.parameters(), **options), splits, 100, 0)
    at_default, swapped = runs[None]["train loss"], runs[1e-3]["train loss"]
    assert swapped <= 1.1 * at_default
    assert swapped < 0.5 * runs[1e-3]["losses"][0]


def test_lr_of_adam_is_refused_by_weights_whose_lr_is_a_factor():
    """``l2l-general`` (``nominal_lr = 1``: lr is a factor on the trained step) refuses ``lr=1e-3`` at construction,
    naming lr and the lr to use, instead of training 1,000 times slower than meta-trained."""
    model = _quickstart().make_model(0)
    assert load_weights("l2l-general").nominal_lr == 1.0
    with pytest.raises(ValueError, match=r"lr=0.001 \(parameter group 0\) is 0.001 times .*Leave lr out to use 1"):
        LearnedOptimizer(model.parameters(), weights="l2l-general", lr=1e-3)


@pytest.mark.parametrize("copy_optimizer", [copy.deepcopy, lambda optimizer: pickle.loads(pickle.dumps(optimizer))])
def test_a_copied_optimizer_still_gives_a_new_group_its_networks_nominal_lr(copy_optimizer):
    """Without ``lr`` a group added later runs at its own network's ``nominal_lr``; a deep copy or an unpickled
    optimizer (which lost that the lr was left out) gave it the constructor's, refused as 1000 times too large."""
    optimizer = copy_optimizer(LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=general(1.0)))
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "weights": general(1e-3)})
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 1e-3]
