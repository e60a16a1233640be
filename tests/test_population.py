import math

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, load_weights
from learned_torch_optim.meta import MetaTrainer, ModuleTask, trainer
from learned_torch_optim.meta.evaluation import protocol
from learned_torch_optim.meta.population import run_population, stack_weights
from learned_torch_optim.meta.tasks import get_task


def regression_task() -> ModuleTask:
    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(16, 3, generator=generator)
        return x, x.sum(dim=1, keepdim=True).sin()

    def model(generator: torch.Generator) -> torch.nn.Module:
        module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.5, generator=generator)
        return module

    return ModuleTask("regression", model, torch.nn.functional.mse_loss, batch)


def perturbed(network: CoordinatewiseLSTM, scale: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: p + scale * torch.randn(p.shape, generator=generator) for name, p in network.named_parameters()}


def as_network(network: CoordinatewiseLSTM, weights: dict[str, torch.Tensor]) -> CoordinatewiseLSTM:
    copy = CoordinatewiseLSTM(**network.config)
    copy.load_state_dict({**network.state_dict(), **weights})
    return copy


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("schedule", ["constant", "warmup-cosine"])
@pytest.mark.parametrize("task", [regression_task(), get_task("rosenbrock")], ids=["module", "rosenbrock"])
def test_each_member_runs_as_run_learned_runs_its_weights(task, schedule, device):
    network = load_weights("l2l-general-v6")
    members = [{}, perturbed(network, 0.05, seed=1), {"readout.bias": torch.tensor([0.0, -1.0])}]
    on_device = as_network(network, {}).to(device)
    weights = stack_weights(on_device, members)
    curves = run_population(on_device, weights, task.problem(3).to(device), 40, 2.0, schedule).cpu()
    assert curves.shape == (3, 40)
    for member, curve in zip(members, curves, strict=True):
        alone = as_network(network, member).to(device)
        alone = protocol.run_learned(alone, task.problem(3).to(device), 40, 2.0, schedule).cpu()
        torch.testing.assert_close(curve, alone, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(curves[0], curves[1]) and not torch.allclose(curves[0], curves[2])


def test_a_member_that_diverges_stops_and_leaves_the_others_alone():
    network = CoordinatewiseLSTM(hidden_size=4, output="direction_magnitude", preprocessing="identity")
    members = [{}, {"readout.bias": torch.tensor([0.0, 50.0])}]  # steps of exp(50): the loss overflows
    problem = get_task("quadratic").problem(0)
    curves = run_population(network, stack_weights(network, members), problem, 10)
    for member, curve in zip(members, curves, strict=True):
        alone = protocol.run_learned(as_network(network, member), problem, 10)
        torch.testing.assert_close(curve, alone, rtol=1e-4, atol=1e-6, equal_nan=True)
    stopped = ~torch.isfinite(curves[1])
    assert 0 < stopped.nonzero()[0].item() < 9 and stopped[stopped.nonzero()[0].item() :].all()
    assert math.isinf(protocol.tail_mean(curves[1], 0.5).item())


def test_a_vectorised_es_run_trains_as_one_run_at_a_time_does(tmp_path, monkeypatch):
    from conftest import quick_config

    settings = dict(meta_gradient="es", es_pairs=3, es_sigma=0.05, meta_loss="log", lr_schedules=["warmup-cosine"])
    settings |= dict(iterations=2, validate_every=2, lr_factor_range=3.0, param_scale=3.0)
    in_turn = MetaTrainer(quick_config(**settings), tmp_path / "in-turn")
    in_turn.train(progress=False)
    at_once = MetaTrainer(quick_config(**settings, es_vectorize=True), tmp_path / "at-once")
    populations = []
    monkeypatch.setattr(trainer, "run_population", lambda *args: populations.append(args) or run_population(*args))
    at_once.train(progress=False)
    assert len(populations) == 2  # an iteration's runs went side by side
    start = MetaTrainer(quick_config(**settings), tmp_path / "start").network.state_dict()
    for name, trained in in_turn.network.state_dict().items():
        assert not torch.equal(trained, start[name]), name
        torch.testing.assert_close(at_once.network.state_dict()[name], trained, rtol=1e-4, atol=1e-6)
    for row, other in zip(in_turn.rows, at_once.rows, strict=True):
        assert row["meta_loss"] == pytest.approx(other["meta_loss"], rel=1e-5)
