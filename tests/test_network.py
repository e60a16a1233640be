import dataclasses
import inspect
import math

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM
from learned_torch_optim.network import NetworkConfig, lr_inputs, preprocess_log_sign


def test_log_sign_preprocessing_matches_appendix_a():
    p = 10.0
    grads = torch.tensor([2.0, -3.0, 1e-3, -1e-6, 0.0, math.exp(-p)], dtype=torch.float64)
    features = preprocess_log_sign(grads, p)
    expected = []
    for g in grads.tolist():
        if abs(g) >= math.exp(-p):
            expected.append([math.log(abs(g)) / p, math.copysign(1.0, g) if g != 0 else 0.0])
        else:
            expected.append([-1.0, math.exp(p) * g])
    torch.testing.assert_close(features, torch.tensor(expected, dtype=torch.float64))


def test_identity_preprocessing_passes_gradient():
    net = CoordinatewiseLSTM(num_layers=0, preprocessing="identity", output_scale=1.0)
    grads = torch.tensor([0.5, -2.0])
    assert torch.equal(net.features(grads)[0], grads.unsqueeze(-1))


def test_matches_torch_lstm_reference(network):
    """The batched step equals torch.nn.LSTM (an independent implementation) followed by the read-out."""
    n, hidden, layers = 37, network.hidden_size, network.num_layers
    reference = torch.nn.LSTM(network.num_inputs, hidden, num_layers=layers)
    with torch.no_grad():
        for layer, cell in enumerate(network.cells):
            getattr(reference, f"weight_ih_l{layer}").copy_(cell.weight_ih)
            getattr(reference, f"weight_hh_l{layer}").copy_(cell.weight_hh)
            getattr(reference, f"bias_ih_l{layer}").copy_(cell.bias_ih)
            getattr(reference, f"bias_hh_l{layer}").copy_(cell.bias_hh)
    grads = torch.randn(n) * torch.logspace(-6, 1, n)
    state = torch.randn(n, network.state_size)
    h0 = torch.stack([state[:, 2 * i * hidden : (2 * i + 1) * hidden] for i in range(layers)])
    c0 = torch.stack([state[:, (2 * i + 1) * hidden : (2 * i + 2) * hidden] for i in range(layers)])
    out, (h1, c1) = reference(network.features(grads)[0].unsqueeze(0), (h0, c0))
    expected_update = 0.1 * (out[0] @ network.readout.weight.t() + network.readout.bias).squeeze(-1)

    update, new_state = network(grads, state)
    torch.testing.assert_close(update, expected_update)
    for i in range(layers):
        torch.testing.assert_close(new_state[:, 2 * i * hidden : (2 * i + 1) * hidden], h1[i])
        torch.testing.assert_close(new_state[:, (2 * i + 1) * hidden : (2 * i + 2) * hidden], c1[i])


def test_zero_layers_is_a_linear_map():
    net = CoordinatewiseLSTM(num_layers=0, preprocessing="identity", output_scale=2.0)
    with torch.no_grad():
        net.readout.weight.fill_(3.0)
        net.readout.bias.fill_(-1.0)
    grads = torch.tensor([1.0, -2.0, 0.5])
    update, state = net(grads, net.initial_state(3))
    assert net.state_size == 0 and state.shape == (3, 0)
    torch.testing.assert_close(update, 2.0 * (3.0 * grads - 1.0))


def test_state_size_is_80_floats_for_the_paper_network():
    assert CoordinatewiseLSTM().state_size == 80


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": -1}, "num_layers"),
        ({"preprocessing": "log"}, "preprocessing"),
        ({"preprocessing_p": 0.0}, "preprocessing_p"),
        ({"linear_direction": True}, "linear_direction"),
        ({"linear_direction": True, "output": "direction_magnitude", "num_layers": 1}, "linear_direction"),
    ],
)
def test_bad_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CoordinatewiseLSTM(**kwargs)


def test_options_are_the_declared_arguments_and_read_only_attributes():
    """Each NetworkConfig field is a keyword argument (with its default, as the signature shows) and an attribute."""
    declared = {option.name: option.default for option in dataclasses.fields(NetworkConfig)}
    shown = inspect.signature(CoordinatewiseLSTM).parameters
    assert {name: parameter.default for name, parameter in shown.items()} == declared
    network = CoordinatewiseLSTM(hidden_size=8, momentum_decays=[0.9])
    assert network.options == NetworkConfig(hidden_size=8, momentum_decays=(0.9,))
    assert {name: getattr(network, name) for name in declared} == dataclasses.asdict(network.options)
    assert CoordinatewiseLSTM(8, 1).options == NetworkConfig(hidden_size=8, num_layers=1)
    with pytest.raises(AttributeError):
        network.hidden_size = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        network.options.hidden_size = 4


def test_save_and_load_pretrained_round_trip(tmp_path, network):
    network.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    loaded = CoordinatewiseLSTM.from_pretrained(tmp_path)
    assert loaded.extra_repr() == network.extra_repr()
    for (name, a), (_, b) in zip(network.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_gradients_flow_to_network_parameters(network):
    update, new_state = network(torch.randn(10), torch.randn(10, network.state_size))
    (update.sum() + new_state.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


LINEAR_DIRECTION = dict(
    hidden_size=6,
    num_layers=1,
    preprocessing="adam_normalized",
    momentum_decays=[0.5, 0.9],
    step_timescales=[10.0],
    readout_skip=True,
    output="direction_magnitude",
    lr_decay_input=True,
    linear_direction=True,
)


def test_a_linear_direction_uses_only_the_gradient_inputs_and_vanishes_with_them():
    torch.manual_seed(0)
    network = CoordinatewiseLSTM(**LINEAR_DIRECTION)
    grad, state = torch.randn(50), torch.randn(50, network.state_size).abs()
    update, _ = network(grad, state, lr_state=torch.tensor([0.3, 0.0]))
    with torch.no_grad():  # what the direction does not use may hold anything
        network.readout.weight[0, :6] = 5.0
        network.readout.weight[0, 6 + 3 :] = -7.0
        network.readout.bias[0] = 2.0
    assert torch.equal(network(grad, state, lr_state=torch.tensor([0.3, 0.0]))[0], update)
    g = torch.zeros(50)  # a first step with a zero gradient: every gradient input is 0, the LSTM's output is not
    assert torch.equal(network(g, network.initial_state(50), lr_state=torch.tensor([0.3, 0.0]))[0], torch.zeros(50))
    network.readout.weight.data[0, 6 + 1] += 1.0  # a used weight: the direction's on the first momentum
    assert not torch.equal(network(grad, state, lr_state=torch.tensor([0.3, 0.0]))[0], update)


def test_the_lr_inputs_are_the_decay_below_the_peak_and_the_rise_above_the_first_lr():
    factors = torch.tensor([0.0, 0.5, 1.0, 0.25])  # a warm-up from lr 0, then a decay
    peaks = factors.cummax(dim=0).values
    expected = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.75, 1.0]])
    torch.testing.assert_close(lr_inputs(factors, factors[0], peaks), expected)  # no lr yet: zeros, not NaN
    assert lr_inputs(3e-3, 3e-3, 3e-3).tolist() == [0.0, 0.0]  # a constant lr changes nothing


def test_a_network_takes_only_the_lr_inputs_it_declares():
    grad, lr_state = torch.randn(7), torch.tensor([0.25, 0.75])
    for flags, columns in (({"lr_decay_input": True}, [0]), ({"lr_warmup_input": True}, [1])):
        network = CoordinatewiseLSTM(hidden_size=3, **flags)
        inputs, _ = network.features(grad, None, lr_state)
        assert network.input_names[-1] == ("lr_decay" if columns == [0] else "lr_warmup")
        torch.testing.assert_close(inputs[:, -1], lr_state[columns].expand(7))
