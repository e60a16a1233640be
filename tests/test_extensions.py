"""The options beyond the paper: richer per-coordinate inputs, magnitude-direction output, Adam initialisation, and
the meta-training methods of later work (mixtures, random scaling, log meta-loss, horizon curriculum)."""

import copy
import importlib
import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import train_until_killed

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_torch_optim.meta.tasks import MixtureTask, QuadraticTask, RescaledProblem, get_task
from learned_torch_optim.meta.trainer import VALIDATION_SEED, MetaTrainer, TrainConfig, initialise_as_adam_
from learned_torch_optim.meta.widen import widen

RICH = dict(
    hidden_size=8,
    preprocessing="adam_normalized",
    output_scale=1e-2,
    momentum_decays=[0.5, 0.9, 0.99],
    step_timescales=[10.0, 1000.0],
    readout_skip=True,
    output="direction_magnitude",
    magnitude_scale=0.1,
)


def test_rich_inputs_are_the_documented_accumulators():
    net = CoordinatewiseLSTM(**RICH)
    assert net.input_names == ["g", "m0.5", "m0.9", "m0.99", "t10", "t1000"]
    assert net.state_size == net.lstm_state_size + 3 + 1 + 1
    grads = [torch.randn(5) for _ in range(4)]
    accumulators = torch.zeros(5, net.accumulator_size)
    m = {beta: torch.zeros(5) for beta in (0.5, 0.9, 0.99)}
    v = torch.zeros(5)
    for t, g in enumerate(grads, start=1):
        x, accumulators = net.features(g, accumulators)
        v = 0.999 * v + 0.001 * g * g
        denom = (v / (1 - 0.999**t)).sqrt() + 1e-8
        expected = [g / denom]
        for beta in (0.5, 0.9, 0.99):
            m[beta] = beta * m[beta] + (1 - beta) * g
            expected.append(m[beta] / (1 - beta**t) / denom)
        expected += [torch.full((5,), math.tanh(t / 10)), torch.full((5,), math.tanh(t / 1000))]
        torch.testing.assert_close(x, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-6)
        assert torch.equal(accumulators[:, -1], torch.full((5,), float(t)))


def test_log_sign_momentum_inputs_are_preprocessed_pairs():
    net = CoordinatewiseLSTM(momentum_decays=[0.9])
    assert net.input_names == ["g.log", "g.sign", "m0.9.log", "m0.9.sign"] and net.num_inputs == 4
    g = torch.tensor([2.0, -1e-6])
    x, _ = net.features(g)
    expected = torch.tensor([[math.log(2.0) / 10, 1.0], [-1.0, math.exp(10) * -1e-6]])  # bias-corrected m = g at t=1
    torch.testing.assert_close(x[:, 2:], expected)
    torch.testing.assert_close(x[:, :2], expected)


def test_paper_config_is_unchanged_and_extensions_round_trip(tmp_path):
    assert CoordinatewiseLSTM().config == {
        "hidden_size": 20,
        "num_layers": 2,
        "preprocessing": "log_sign",
        "preprocessing_p": 10.0,
        "output_scale": 0.1,
    }
    net = CoordinatewiseLSTM(**RICH)
    net.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["momentum_decays"] == [0.5, 0.9, 0.99] and saved["output"] == "direction_magnitude"
    loaded = CoordinatewiseLSTM.from_pretrained(tmp_path)
    assert loaded.config == net.config
    g, s = torch.randn(7), net.initial_state(7)
    torch.testing.assert_close(loaded(g, s)[0], net(g, s)[0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"momentum_decays": [1.0]}, "momentum_decays"),
        ({"momentum_decays": [1 - 1e-9]}, "momentum_decays"),
        ({"second_moment_decay": 1 - 1e-9}, "second_moment_decay"),
        ({"second_moment_decay": -0.1}, "second_moment_decay"),
        ({"step_timescales": [0.0]}, "step_timescales"),
        ({"output": "tanh"}, "output"),
        ({"preprocessing": "adam"}, "preprocessing"),
        ({"update_clip": 0.0}, "update_clip"),
        ({"preprocessing": "adam_normalized", "gradient_rms_clip": -1.0}, "gradient_rms_clip"),
        ({"preprocessing": "log_sign", "gradient_rms_clip": 5.0}, "gradient_rms_clip"),
    ],
)
def test_bad_extension_options_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CoordinatewiseLSTM(**kwargs)


def test_adam_initialisation_is_adam():
    """init='adam' makes the learned optimizer take exactly torch.optim.Adam's steps (lr = output_scale)."""
    net = initialise_as_adam_(CoordinatewiseLSTM(**RICH))
    torch.manual_seed(0)
    target = torch.randn(30)
    ours = torch.zeros(30, requires_grad=True)
    adams = torch.zeros(30, requires_grad=True)
    learned = LearnedOptimizer([ours], weights=net)
    adam = torch.optim.Adam([adams], lr=1e-2, eps=1e-8)
    for _ in range(25):
        for p, opt in ((ours, learned), (adams, adam)):
            opt.zero_grad()
            ((p - target) ** 2 * torch.linspace(0.1, 10, 30)).sum().backward()
            opt.step()
    torch.testing.assert_close(ours, adams, rtol=1e-5, atol=1e-6)


def test_adam_initialisation_needs_its_inputs():
    with pytest.raises(ValueError, match="adam_normalized"):
        initialise_as_adam_(CoordinatewiseLSTM())


def test_extended_networks_checkpoint_exactly():
    net = CoordinatewiseLSTM(**RICH)
    assert not net.is_paper_rule and CoordinatewiseLSTM().is_paper_rule

    def run(steps, optimizer=None, param=None):
        torch.manual_seed(1)
        param = param if param is not None else torch.nn.Parameter(torch.randn(4, 5))
        optimizer = optimizer or LearnedOptimizer([param], weights=net)
        for _ in range(steps):
            optimizer.zero_grad()
            (param.sin().sum() + (param**2).sum()).backward()
            optimizer.step()
        return param, optimizer

    straight, _ = run(6)
    half, optimizer = run(3)
    assert optimizer.state[half]["lstm_state"].shape == (4, 5, net.state_size)
    reloaded = torch.nn.Parameter(half.detach().clone())
    fresh = LearnedOptimizer([reloaded], weights=net)
    fresh.load_state_dict(optimizer.state_dict())
    torch.manual_seed(1)
    for _ in range(3):
        fresh.zero_grad()
        (reloaded.sin().sum() + (reloaded**2).sum()).backward()
        fresh.step()
    assert torch.equal(reloaded, straight)


def test_mixture_picks_a_family_per_seed():
    mixture = get_task("quadratic,quadratic-ill")
    assert isinstance(mixture, MixtureTask) and mixture.name == "quadratic,quadratic-ill"
    families = {mixture.family(seed).name for seed in range(40)}
    assert families == {"quadratic", "quadratic-ill"}
    for seed in range(5):
        a, b = mixture.problem(seed), mixture.family(seed).problem(seed)
        assert torch.equal(a.init_params(), b.init_params())


def test_rescaled_problem_is_the_problem_in_other_coordinates():
    problem = QuadraticTask().problem(3)
    scales = torch.logspace(-1, 1, 10)
    rescaled = RescaledProblem(problem, scales)
    phi = rescaled.init_params()
    torch.testing.assert_close(phi * scales, problem.init_params())
    assert torch.equal(rescaled.loss(phi, None), problem.loss(phi * scales, None))


def test_each_process_draws_every_process_scales_and_keeps_its_own(tmp_path):
    """Under torch.distributed with ``param_scale``, rank ``r`` keeps the ``r``-th part of one stream of scales drawn
    for every rank's problems, so the shared generators stay in step (the problems differ in size here)."""
    config = quick(task="quadratic,quadratic-ill", meta_batch_size=1)
    ranks = [MetaTrainer(config, tmp_path / f"rank{r}") for r in range(2)]
    mixture = ranks[0].task
    seeds = [next(s for s in range(100) if mixture.family(s).name == name) for name in ("quadratic", "quadratic-ill")]
    kept = []
    for rank, trainer in enumerate(ranks):
        trainer.rank, trainer.world_size = rank, 2
        kept.append(trainer._draw_scales(seeds, mixture.problems(seeds[rank : rank + 1])))
    assert torch.equal(ranks[0].generator.get_state(), ranks[1].generator.get_state())
    stream = torch.exp(
        (2 * torch.rand(10 + 20, generator=torch.Generator().manual_seed(config.seed)) - 1) * math.log(10)
    )
    assert [k.numel() for k in kept] == [10, 20]
    assert torch.equal(torch.cat(kept), stream)


def quick(**overrides):
    values = dict(
        task="quadratic",
        iterations=4,
        horizon=10,
        unroll=5,
        meta_lr=1e-3,
        meta_batch_size=2,
        validate_every=2,
        validation_problems=2,
        checkpoint_every=1,
        network_config=dict(RICH),
        init="adam",
        meta_loss="log",
        param_scale=10.0,
        horizon_curriculum=[5, 10],
        meta_lr_schedule="cosine",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_generalist_methods_train_and_resume_exactly(tmp_path):
    straight = MetaTrainer(quick(), tmp_path / "straight")
    assert [straight.horizon(i) for i in range(4)] == [5, 5, 10, 10]
    straight.train(progress=False)
    assert all(math.isfinite(row["meta_loss"]) for row in straight.rows)

    train_until_killed(MetaTrainer(quick(iterations=4), tmp_path / "resumed"), 3, KeyboardInterrupt)
    resumed = MetaTrainer(quick(), tmp_path / "resumed")
    resumed.train(resume=True, progress=False)
    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    card = (tmp_path / "straight" / "README.md").read_text()
    assert "Lv et al. 2017" in card and "cosine" in card and "[5, 10]" in card


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"horizon_curriculum": [7]}, "horizon_curriculum"),
        ({"meta_loss": "mean"}, "meta_loss"),
        ({"init": "zeros"}, "init"),
        ({"param_scale": 0.5}, "param_scale"),
        ({"meta_lr_schedule": "step"}, "meta_lr_schedule"),
    ],
)
def test_bad_generalist_settings_are_named(overrides, name):
    with pytest.raises(ValueError, match=name):
        quick(**overrides)


def test_accumulators_need_fp32_state():
    with pytest.raises(ValueError, match="state_dtype"):
        LearnedOptimizer(
            [torch.zeros(2, requires_grad=True)], weights=CoordinatewiseLSTM(**RICH), state_dtype=torch.bfloat16
        )


def test_paper_form_config_json_has_only_the_paper_keys(tmp_path):
    CoordinatewiseLSTM().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved) == {"hidden_size", "num_layers", "preprocessing", "preprocessing_p", "output_scale"}


def test_resume_accepts_the_same_network_spelled_out_and_refuses_new_iterations_under_a_schedule(tmp_path):
    paper_form = {"preprocessing": "identity", "output_scale": 1.0, "hidden_size": 8}
    plain = dict(network_config=paper_form, init="default", meta_loss="sum", param_scale=None, horizon_curriculum=[])
    MetaTrainer(quick(iterations=1, meta_lr_schedule="constant", **plain), tmp_path / "a").train(progress=False)
    spelled_out = dict(plain, network_config={**paper_form, "momentum_decays": [], "output": "additive"})
    MetaTrainer(quick(iterations=2, meta_lr_schedule="constant", **spelled_out), tmp_path / "a").train(
        resume=True, progress=False
    )
    MetaTrainer(quick(iterations=1, **plain), tmp_path / "b").train(progress=False)
    with pytest.raises(ValueError, match="iterations"):
        MetaTrainer(quick(iterations=2, **plain), tmp_path / "b").train(resume=True, progress=False)


def test_fine_tuning_starts_from_the_given_weights_and_validates_at_its_own_horizon(tmp_path, monkeypatch):
    MetaTrainer(quick(iterations=2), tmp_path / "first").train(progress=False)
    start = CoordinatewiseLSTM.from_pretrained(tmp_path / "first")
    tuned = MetaTrainer(
        quick(iterations=2, init="default", network_config={}, init_from=str(tmp_path / "first"), validation_horizon=7),
        tmp_path / "tuned",
    )
    for name, tensor in start.state_dict().items():
        assert torch.equal(tensor, tuned.network.state_dict()[name]), name
    assert tuned.config.network_config == start.config
    steps = []
    protocol = importlib.import_module("learned_torch_optim.meta.evaluation.protocol")
    original = protocol.run_learned
    monkeypatch.setattr(
        protocol, "run_learned", lambda net, problem, n, **options: steps.append(n) or original(net, problem, n)
    )
    assert tuned.validate() < math.inf
    assert steps == [7, 7]
    tuned.train(progress=False)
    assert tuned.rows[0]["iteration"] == 0 and tuned.rows[0]["validation_loss"] >= tuned.best_metric
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert f"from weights `{tmp_path / 'first'}`" in card and "2, 7 steps each" in card
    resumed = MetaTrainer(
        quick(iterations=2, init="default", network_config={}, init_from=str(tmp_path / "first"), validation_horizon=7),
        tmp_path / "tuned",
    )
    resumed.train(resume=True, progress=False)
    assert resumed.iteration == 2 and resumed.config == tuned.config


def test_validation_by_the_final_loss_scores_the_last_tenth_of_the_horizon(tmp_path, monkeypatch):
    """``validation_metric="final"`` keeps the network whose log loss is lowest over the last 10% of the horizon
    (the suite's final loss), ``"mean"`` the one lowest over the whole horizon."""
    protocol = importlib.import_module("learned_torch_optim.meta.evaluation.protocol")
    curve = torch.cat([torch.full((18,), math.e), torch.full((2,), 1.0)])  # log loss 1, then 0 over the last 10%
    monkeypatch.setattr(protocol, "run_learned", lambda *args, **options: curve)
    scores = {}
    for metric in ("mean", "final"):
        trainer = MetaTrainer(quick(horizon=20, validation_metric=metric), tmp_path / metric)
        scores[metric] = trainer.validate()
    assert scores["mean"] == pytest.approx(0.9) and scores["final"] == pytest.approx(0.0, abs=1e-6)
    card = MetaTrainer(quick(validation_metric="final"), tmp_path / "card").recipe_markdown()
    assert "best validation log loss (mean over its last 10%)" in card


def test_validation_against_the_start_counts_the_problems_made_worse_minus_better(tmp_path, monkeypatch):
    """``validation_metric="final-vs-start"`` records the starting weights' final losses at the first validation
    (scoring 0) and then scores (worse - better) / problems; a diverged run is worse; a resumed run keeps them."""
    with pytest.raises(ValueError, match="compares with the starting weights: give init_from"):
        MetaTrainer(quick(validation_metric="final-vs-start"), tmp_path / "fresh")
    MetaTrainer(quick(iterations=1), tmp_path / "first").train(progress=False)
    config = quick(
        iterations=2,
        init="default",
        network_config={},
        init_from=str(tmp_path / "first"),
        validation_metric="final-vs-start",
    )
    config = replace(config, validation_problems=4, meta_lr_schedule="constant", horizon_curriculum=[])
    tuned = MetaTrainer(config, tmp_path / "tuned")
    finals = iter([1.0, 2.0, 3.0, 4.0] + [0.5, 2.0, 3.5, math.nan])  # each problem's, one validation after the other
    protocol = importlib.import_module("learned_torch_optim.meta.evaluation.protocol")
    monkeypatch.setattr(protocol, "tail_mean", lambda curve, fraction: torch.tensor(next(finals)).log())
    assert tuned.validate() == 0.0 and tuned.start_scores == pytest.approx([0.0, math.log(2), math.log(3), math.log(4)])
    assert tuned.validate() == pytest.approx((2 - 1) / 4)  # 0.5 better, 2.0 equal, 3.5 and the diverged run worse
    monkeypatch.undo()
    tuned = MetaTrainer(replace(config, iterations=1), tmp_path / "tuned")
    tuned.train(progress=False)
    assert len(tuned.start_scores) == 4
    resumed = MetaTrainer(config, tmp_path / "tuned")
    resumed.train(resume=True, progress=False)
    assert resumed.start_scores == tuned.start_scores and resumed.rows[-1]["iteration"] == 2
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert "| best validation: problems worse than the starting weights' minus better, as a share |" in card
    assert "| iteration | worse minus better |" in card


def test_validation_per_family_takes_the_families_of_a_mixture_in_turn(tmp_path):
    mixture = "quadratic,quadratic-ill,rosenbrock"
    families = [t.name for t in get_task(mixture).tasks]
    by_seed = MetaTrainer(quick(task=mixture, validation_problems=6), tmp_path / "seed")
    per_family = MetaTrainer(quick(task=mixture, validation_problems=6, validation_per_family=True), tmp_path / "fam")
    drawn = [by_seed.task.family(VALIDATION_SEED + i).name for i in range(6)]
    assert drawn != families * 2  # the seeds alone do not take the families in turn
    for i in range(6):
        expected = get_task(families[i % 3]).problem(VALIDATION_SEED + i)
        assert torch.equal(per_family.validation_problem(i).init_params(), expected.init_params())
        assert torch.equal(
            by_seed.validation_problem(i).init_params(), by_seed.task.problem(VALIDATION_SEED + i).init_params()
        )
    assert "6, 10 steps each, families in turn" in per_family.recipe_markdown()


@pytest.mark.parametrize(
    "config",
    [
        RICH,
        {"hidden_size": 6},
        {"num_layers": 0, "preprocessing": "identity"},
        {"momentum_decays": [0.9], "step_timescales": [10.0], "readout_skip": True},
        {**RICH, "momentum_decays": [0.9, 0.1234567, 0.12345671], "step_timescales": [1e6, 1000001.0]},
        {**RICH, "lr_decay_input": True},
        {**RICH, "lr_warmup_input": True},
    ],
)
def test_widened_network_computes_the_same_updates_until_trained(config):
    torch.manual_seed(0)
    narrow = CoordinatewiseLSTM(**config)
    with torch.no_grad():
        for param in narrow.parameters():
            param.normal_(0, 0.3)
    added = dict(momentum_decays=[0.9, 0.999], step_timescales=[1000.0, 10000.0])
    wide = widen(narrow, **added, lr_decay_input=True, lr_warmup_input=True)
    assert set(narrow.input_names) < set(wide.input_names) and wide.input_names[-2:] == ["lr_decay", "lr_warmup"]
    narrow_state, wide_state = narrow.initial_state(40), wide.initial_state(40)
    for step in range(20):
        grad, lr_state = torch.randn(40) * 0.1, torch.tensor([step / 20, 1 - step / 40])
        narrow_update, narrow_state = narrow(grad, narrow_state, lr_state)
        wide_update, wide_state = wide(grad, wide_state, lr_state)
        torch.testing.assert_close(wide_update, narrow_update, rtol=1e-5, atol=1e-8)
    for column in (-1, -2):  # the added lr inputs' weights, once set, change the updates
        changed = copy.deepcopy(wide)
        with torch.no_grad():
            (changed.cells[0].weight_ih if changed.num_layers else changed.readout.weight)[:, column] = 1.0
        assert not torch.equal(changed(grad, wide_state, lr_state)[0], narrow(grad, narrow_state, lr_state)[0])


def test_the_lr_inputs_see_how_far_the_schedule_fell_below_and_rose_above_its_first_factor(monkeypatch):
    import learned_torch_optim.meta.trainer as trainer_module

    seen = []

    def recording_unroll(*args, lr_states=None, **kwargs):
        seen.append(lr_states)
        return unroll(*args, lr_states=lr_states, **kwargs)

    unroll = trainer_module.unroll
    monkeypatch.setattr(trainer_module, "unroll", recording_unroll)
    network = CoordinatewiseLSTM(**RICH, lr_decay_input=True, lr_warmup_input=True)
    factors = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.5, 4.0])
    problem = QuadraticTask(dims=3).problem(0)
    trainer_module.meta_iteration(
        network, torch.optim.Adam(network.parameters()), problem, horizon=6, unroll_length=3, lr_factors=factors
    )
    decay, warmup = torch.cat(seen).unbind(dim=1)
    torch.testing.assert_close(decay, torch.tensor([0.0, 0.0, 0.0, 0.5, 0.75, 0.0]))
    torch.testing.assert_close(warmup, torch.tensor([0.0, 0.5, 0.75, 0.75, 0.75, 0.875]))
    assert network.cells[0].weight_ih.grad[:, -2:].abs().sum(dim=0).min() > 0  # both inputs' weights meta-train


def test_fine_tuning_can_train_only_the_added_inputs(tmp_path):
    MetaTrainer(quick(iterations=1), tmp_path / "first").train(progress=False)
    start = CoordinatewiseLSTM.from_pretrained(tmp_path / "first")
    tuned = MetaTrainer(
        quick(
            iterations=2,
            validate_every=1,
            init="default",
            network_config={"lr_decay_input": True},
            init_from=str(tmp_path / "first"),
            train_added_inputs_only=True,
            lr_schedules=["warmup-cosine"],
        ),
        tmp_path / "tuned",
    )
    tuned.train_iteration()
    network = tuned.network
    assert torch.equal(network.readout.bias, start.readout.bias) and torch.equal(
        network.cells[0].weight_ih[:, :-1], start.cells[0].weight_ih
    )
    assert torch.equal(network.readout.weight[:, : start.readout.weight.shape[1]], start.readout.weight)
    assert network.cells[0].weight_ih[:, -1].abs().sum() > 0 and network.readout.weight[:, -1].abs().sum() > 0
    with pytest.raises(ValueError, match="needs init_from"):
        MetaTrainer(quick(train_added_inputs_only=True), tmp_path / "no-start")
    with pytest.raises(ValueError, match="add no input"):
        MetaTrainer(
            quick(init="default", init_from=str(tmp_path / "first"), train_added_inputs_only=True), tmp_path / "none"
        )


def test_fine_tuning_can_add_inputs(tmp_path):
    MetaTrainer(quick(iterations=1), tmp_path / "first").train(progress=False)
    added = {"step_timescales": [10.0, 1000.0, 5000.0]}
    tuned = MetaTrainer(
        quick(iterations=1, init="default", network_config=added, init_from=str(tmp_path / "first")), tmp_path / "tuned"
    )
    assert tuned.network.step_timescales == (10.0, 1000.0, 5000.0)
    assert tuned.config.network_config == CoordinatewiseLSTM(**{**RICH, **added}).config
    tuned.train(progress=False)
    assert CoordinatewiseLSTM.from_pretrained(tmp_path / "tuned").step_timescales == (10.0, 1000.0, 5000.0)

    bounds = {"update_clip": 0.5, "gradient_rms_clip": 4.0}
    clipped = MetaTrainer(
        quick(iterations=1, init="default", network_config=bounds, init_from=str(tmp_path / "first")),
        tmp_path / "clipped",
    )
    start = CoordinatewiseLSTM.from_pretrained(tmp_path / "first")
    assert clipped.network.update_clip == 0.5 and clipped.network.gradient_rms_clip == 4.0
    for name, tensor in start.state_dict().items():
        assert torch.equal(tensor, clipped.network.state_dict()[name]), name
    clipped.train(progress=False)

    MetaTrainer(quick(iterations=2, seed=1), tmp_path / "first").train(overwrite=True, progress=False)
    with pytest.raises(ValueError, match="sha256"):
        MetaTrainer(
            quick(iterations=1, init="default", network_config=bounds, init_from=str(tmp_path / "first")),
            tmp_path / "clipped",
        ).train(resume=True, progress=False)


def test_fine_tuning_refuses_a_second_start_or_another_network(tmp_path):
    MetaTrainer(quick(iterations=1), tmp_path / "first").train(progress=False)
    with pytest.raises(ValueError, match="init_from"):
        quick(init="adam", init_from=str(tmp_path / "first"))
    with pytest.raises(ValueError, match="init_from"):
        MetaTrainer(
            quick(init="default", network_config={"hidden_size": 3}, init_from=str(tmp_path / "first")), tmp_path
        )
    with pytest.raises(ValueError, match="validation_horizon"):
        quick(validation_horizon=0)


def test_update_clip_bounds_every_coordinate_and_leaves_small_updates_alone(tmp_path):
    torch.manual_seed(0)
    free = CoordinatewiseLSTM(**RICH)
    grad = torch.randn(500) * torch.logspace(-3, 3, 500)
    state = free.initial_state(500)
    free_update, _ = free(grad, state)
    clip = free_update.abs().median().item()
    bounded = CoordinatewiseLSTM(**{**RICH, "update_clip": clip})
    bounded.load_state_dict(free.state_dict())
    assert not bounded.is_paper_rule and bounded.config["update_clip"] == clip
    bounded_update, _ = bounded(grad, state)
    assert bounded_update.abs().max() <= clip
    small = free_update.abs() < clip
    assert small.sum() > 100 and torch.equal(free_update[small], bounded_update[small])
    bounded.save_pretrained(tmp_path)
    assert CoordinatewiseLSTM.from_pretrained(tmp_path).update_clip == clip


def test_gradient_rms_clip_bounds_an_outlier_by_the_running_rms(tmp_path):
    """A gradient far larger than its history enters the inputs and averages as ``clip * sqrt(vhat)``; smaller
    gradients, first steps and coordinates that had no gradient yet pass unchanged."""
    net = CoordinatewiseLSTM(**{**RICH, "gradient_rms_clip": 3.0})
    v_index = len(RICH["momentum_decays"])
    first = torch.tensor([0.0, 100.0, 1.0, 1.0, 1.0, 1.0])
    _, accumulators = net.features(first, None)
    torch.testing.assert_close(accumulators[:, v_index], 0.001 * first**2)  # a first step is not clipped
    for _ in range(20):
        _, accumulators = net.features(torch.tensor([0.0, 1.0, 1.0, -1.0, 1.0, -1.0]), accumulators)
    step = accumulators[0, -1].item()
    rms = (accumulators[:, v_index] / (1 - 0.999**step)).sqrt()
    outlier = torch.tensor([7.0, 0.0, 0.1, -0.1, 1000.0, -1000.0]) * torch.cat((torch.ones(1), rms[1:]))
    x, new = net.features(outlier, accumulators)
    entered = (new[:, 1] - 0.9 * accumulators[:, 1]) / 0.1  # the gradient that entered the 0.9-momentum
    expected = torch.cat((outlier[:4], 3.0 * rms[4:5], -3.0 * rms[5:6]))
    torch.testing.assert_close(entered, expected, rtol=1e-4, atol=1e-6)
    free = CoordinatewiseLSTM(**RICH)
    free_x, _ = free.features(expected, accumulators)
    torch.testing.assert_close(x, free_x)
    assert net.config["gradient_rms_clip"] == 3.0 and "gradient_rms_clip" not in free.config
    net.save_pretrained(tmp_path)
    assert CoordinatewiseLSTM.from_pretrained(tmp_path).gradient_rms_clip == 3.0
