"""Per-group weights: a parameter group may run its own learned rule (the paper's CIFAR-10 setting, one LSTM per
parameter kind), through the whole torch.optim contract."""

import io

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer

RICH = dict(
    hidden_size=6,
    num_layers=1,
    preprocessing="adam_normalized",
    output_scale=1e-2,
    momentum_decays=[0.9],
    step_timescales=[10.0],
    readout_skip=True,
    output="direction_magnitude",
)


def networks() -> tuple[CoordinatewiseLSTM, CoordinatewiseLSTM]:
    torch.manual_seed(0)
    return CoordinatewiseLSTM(hidden_size=8, num_layers=2), CoordinatewiseLSTM(**RICH)


def make_model() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer | list, steps: int, start: int = 0) -> None:
    optimizers = optimizer if isinstance(optimizer, list) else [optimizer]
    for i in range(start, start + steps):
        generator = torch.Generator().manual_seed(i)
        for each in optimizers:
            each.zero_grad()
        model(torch.randn(5, 2, 6, generator=generator)).pow(2).mean().backward()
        for each in optimizers:
            each.step()


def grouped(model: torch.nn.Sequential, conv_rule, fc_rule, **options) -> LearnedOptimizer:
    return LearnedOptimizer(
        [{"params": model[0].parameters(), "weights": conv_rule}, {"params": model[2].parameters()}],
        weights=fc_rule,
        **options,
    )


@pytest.mark.parametrize("implementation", ["reference", "blocked", "fused"])
def test_each_group_runs_its_own_network_as_an_optimizer_of_its_own_would(implementation):
    conv_rule, fc_rule = networks()
    model, twin = make_model(), make_model()
    optimizer = grouped(model, conv_rule, fc_rule, implementation=implementation)
    assert optimizer.group_networks == [conv_rule, fc_rule] and optimizer.network is fc_rule
    separate = [
        LearnedOptimizer(twin[0].parameters(), weights=conv_rule, implementation=implementation),
        LearnedOptimizer(twin[2].parameters(), weights=fc_rule, implementation=implementation),
    ]
    train(model, optimizer, 3)
    train(twin, separate, 3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    assert optimizer.state[model[0].weight]["lstm_state"].shape[-1] == conv_rule.state_size == 32
    assert optimizer.state[model[2].weight]["lstm_state"].shape[-1] == fc_rule.state_size


def test_two_weight_sets_resume_bit_exactly_and_record_their_identities():
    conv_rule, fc_rule = networks()
    straight = make_model()
    train(straight, grouped(straight, conv_rule, fc_rule), 4)

    model = make_model()
    optimizer = grouped(model, conv_rule, fc_rule)
    train(model, optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    identities = checkpoint["optimizer"]["group_weights_identities"]
    assert [i["sha256"] for i in identities] == [n.weights_identity.sha256 for n in (conv_rule, fc_rule)]
    assert all("weights" not in group for group in checkpoint["optimizer"]["param_groups"])

    resumed = make_model()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = grouped(resumed, conv_rule, fc_rule)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_optimizer, 2, start=2)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters()))


def test_resuming_with_the_groups_weights_swapped_warns_and_names_the_group():
    conv_rule, fc_rule = networks()
    model = make_model()
    optimizer = grouped(model, conv_rule, fc_rule)
    train(model, optimizer, 1)
    same_sizes = CoordinatewiseLSTM(hidden_size=8, num_layers=2)  # conv_rule's shape, other tensors
    other = grouped(model, same_sizes, fc_rule)
    with pytest.warns(UserWarning, match="of parameter group 0 belongs to weights"):
        other.load_state_dict(optimizer.state_dict())
    swapped = grouped(model, fc_rule, conv_rule)  # sizes differ too: refused before anything changes
    with pytest.raises(ValueError, match="parameter 0 has shape"), pytest.warns(UserWarning):
        swapped.load_state_dict(optimizer.state_dict())
    assert not swapped.state


def test_a_group_added_later_brings_its_own_weights():
    conv_rule, fc_rule = networks()
    model = make_model()
    optimizer = LearnedOptimizer(model[2].parameters(), weights=fc_rule)
    train(model, optimizer, 1)
    optimizer.add_param_group({"params": model[0].parameters(), "weights": conv_rule, "lr": 0.5})
    assert optimizer.group_networks == [fc_rule, conv_rule] and optimizer.param_groups[1]["lr"] == 0.5
    train(model, optimizer, 2)
    assert optimizer.state[model[0].bias]["lstm_state"].shape == (3, conv_rule.state_size)
    restored = LearnedOptimizer(model[2].parameters(), weights=fc_rule)
    restored.add_param_group({"params": model[0].parameters(), "weights": conv_rule, "lr": 0.5})
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.state[model[0].bias]["lstm_state"], optimizer.state[model[0].bias]["lstm_state"])


def test_the_callers_group_dicts_keep_their_weights():
    conv_rule, fc_rule = networks()
    model = make_model()
    groups = [{"params": list(model[0].parameters()), "weights": conv_rule}, {"params": list(model[2].parameters())}]
    first, second = (LearnedOptimizer(groups, weights=fc_rule) for _ in range(2))
    assert groups[0]["weights"] is conv_rule
    assert first.group_networks == second.group_networks == [conv_rule, fc_rule]


def test_group_weights_are_checked_like_the_constructors():
    model = make_model()
    with pytest.raises(ValueError, match="'revision' without 'weights'"):
        LearnedOptimizer([{"params": model.parameters(), "revision": "main"}])
    with pytest.raises(ValueError, match="state_dtype"):
        LearnedOptimizer(
            [{"params": model.parameters(), "weights": CoordinatewiseLSTM(**RICH)}],
            weights=CoordinatewiseLSTM(),
            state_dtype=torch.bfloat16,
        )
    with pytest.raises(Exception, match="no-such-weights"):
        LearnedOptimizer([{"params": model.parameters(), "weights": "no-such-weights"}])


def test_state_dicts_from_before_group_weights_still_load():
    conv_rule, _ = networks()
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=conv_rule)
    train(model, optimizer, 1)
    state_dict = optimizer.state_dict()
    del state_dict["group_weights_identities"]  # as written by earlier versions
    resumed = LearnedOptimizer(model.parameters(), weights=conv_rule)
    resumed.load_state_dict(state_dict)
    assert torch.equal(resumed.state[model[0].weight]["lstm_state"], optimizer.state[model[0].weight]["lstm_state"])
