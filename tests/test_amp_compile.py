"""Mixed precision (GradScaler, bf16 autocast) and torch.compile with LearnedOptimizer."""

import copy

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, load_weights


def make_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)


def test_grad_scaler_unscales_and_skips_non_finite_steps(network):
    model, reference = make_model(), make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    ref_optimizer = LearnedOptimizer(reference.parameters(), weights=network)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(3):
        x, y = batch(step)
        optimizer.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
        ref_optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        ref_optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)

    before = copy.deepcopy(model.state_dict())
    state_before = {k: v["lstm_state"].clone() for k, v in enumerate(optimizer.state.values())}
    optimizer.zero_grad()
    x, y = batch(9)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(state_before[k], v["lstm_state"]) for k, v in enumerate(optimizer.state.values()))
    assert scaler.get_scale() < 2.0**10


def test_bf16_autocast_training_keeps_fp32_params_and_state(network):
    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network)
    for step in range(3):
        x, y = batch(step)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert all(s["lstm_state"].dtype == torch.float32 for s in optimizer.state.values())


def lr_input_network() -> CoordinatewiseLSTM:
    """The default weights' form (both lr inputs), randomly initialised."""
    torch.manual_seed(0)
    return CoordinatewiseLSTM(**{**load_weights("default").config, "lr_decay_input": True, "lr_warmup_input": True})


@pytest.mark.parametrize("form", ["paper", "lr inputs, under a warm-up"])
def test_compiled_training_step_matches_eager(network, form):
    lrs = [1.0] * 3 if form == "paper" else [1e-4, 1e-3, 5e-4]
    if form != "paper":
        network = lr_input_network()
    eager_model, compiled_model = make_model(), make_model()
    eager_opt = LearnedOptimizer(eager_model.parameters(), weights=network)
    compiled_opt = LearnedOptimizer(compiled_model.parameters(), weights=network)

    def train_step(model, optimizer, x, y):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    compiled_step = torch.compile(train_step)
    for step, lr in enumerate(lrs):
        x, y = batch(step)
        eager_opt.param_groups[0]["lr"] = compiled_opt.param_groups[0]["lr"] = lr
        torch.testing.assert_close(
            train_step(eager_model, eager_opt, x, y), compiled_step(compiled_model, compiled_opt, x, y)
        )
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
