"""Learning-rate schedules: their factors, the evaluation protocol's runs under them, and meta-training under them."""

import math

import pytest
import torch
from conftest import quick_config

from learned_torch_optim import CoordinatewiseLSTM
from learned_torch_optim.meta import MetaTrainer
from learned_torch_optim.meta.bptt import unroll
from learned_torch_optim.meta.evaluation.protocol import run_optimizer
from learned_torch_optim.meta.schedules import lr_factor, lr_factors
from learned_torch_optim.meta.tasks import get_task


def test_warmup_cosine_warms_up_over_5_percent_then_decays_to_zero():
    factors = lr_factors("warmup-cosine", 100)
    assert factors[:5].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[5] == 1.0 and 0 < factors[-1] < 1e-3
    assert bool((factors[6:] < factors[5:-1]).all())
    assert lr_factors("constant", 7).tolist() == [1.0] * 7
    assert lr_factor("warmup-cosine", 0, 1) == 1.0
    with pytest.raises(ValueError, match="'linear'"):
        lr_factor("linear", 0, 10)


def test_the_protocol_runs_the_optimizer_under_the_schedule():
    problem = get_task("quadratic").problem(0)
    seen = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    run_optimizer(problem, lambda params: RecordingSGD(params, lr=0.01), 40, schedule="warmup-cosine")
    assert seen == pytest.approx((0.01 * lr_factors("warmup-cosine", 40)).tolist())


def test_unroll_scales_each_update_by_its_factor():
    network = CoordinatewiseLSTM(preprocessing="identity", hidden_size=4)
    problem = get_task("quadratic").problem(0)
    params, state = problem.init_params(), network.initial_state(10)
    frozen = unroll(network, problem, params, state, 3, lr_factors=torch.zeros(3))
    assert torch.equal(frozen.params, params)
    plain = unroll(network, problem, params, state, 3)
    ones = unroll(network, problem, params, state, 3, lr_factors=torch.ones(3))
    assert torch.equal(plain.params, ones.params)


def test_meta_training_draws_a_schedule_and_factor_per_iteration(tmp_path):
    plain = MetaTrainer(quick_config(), tmp_path / "plain")
    state = plain.generator.get_state()
    assert plain._draw_lr() == (None, 1.0) and torch.equal(plain.generator.get_state(), state)
    config = quick_config(lr_schedules=["constant", "warmup-cosine"], lr_factor_range=3.0)
    drawn = [MetaTrainer(config, tmp_path / "a")._draw_lr() for _ in range(2)]
    assert drawn[0] == drawn[1]
    trainer = MetaTrainer(config, tmp_path / "b")
    draws = [trainer._draw_lr() for _ in range(20)]
    factors = {round(factor, 6) for _, factor in draws}
    assert all(1 / 3 <= f <= 3 for f in factors) and len(factors) == 20
    assert {schedule for schedule, _ in draws} == {"constant", "warmup-cosine"}
    trainer.train(progress=False)
    assert (
        math.isfinite(trainer.best_metric)
        and "| lr schedules (one per problem) | ['constant', 'warmup-cosine'] |"
        in (tmp_path / "b" / "README.md").read_text()
    )


@pytest.mark.parametrize(
    "overrides, message", [({"lr_schedules": ["step"]}, "'step'"), ({"lr_factor_range": 0.5}, "at least 1")]
)
def test_bad_schedule_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        quick_config(**overrides)
