import importlib
import math
from dataclasses import replace

import pytest
import torch
from conftest import quick_config
from torch import Tensor

from learned_torch_optim import CoordinatewiseLSTM, load_weights
from learned_torch_optim.meta import MetaTrainer, TrainConfig, bptt, get_task
from learned_torch_optim.meta.bptt import log_loss
from learned_torch_optim.meta.es import antithetic_gradient, centred_ranks
from learned_torch_optim.meta.evaluation import protocol
from learned_torch_optim.meta.widen import added_weights, widen


def test_the_estimate_of_a_quadratic_is_its_gradient_and_the_weights_come_back():
    target = torch.tensor([1.0, -2.0, 0.5])
    params = [torch.tensor([0.3, 0.1, -0.4]), torch.tensor([[2.0]])]
    before = [p.clone() for p in params]

    def score() -> float:
        return float(((params[0] - target) ** 2).sum() + 3 * params[1].sum() ** 2)

    generator = torch.Generator().manual_seed(0)
    grads, scores = antithetic_gradient(params, score, pairs=4000, sigma=0.1, generator=generator)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert len(scores) == 8000
    assert torch.allclose(grads[0], 2 * (before[0] - target), atol=0.3)
    assert torch.allclose(grads[1], torch.tensor([[12.0]]), atol=0.6)


def test_masked_weights_are_never_perturbed_and_get_no_gradient():
    params = [torch.zeros(4)]
    seen = []

    def score() -> float:
        seen.append(params[0].clone())
        return float(params[0].sum())

    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    grads, _ = antithetic_gradient(
        params, score, pairs=5, sigma=0.5, generator=torch.Generator().manual_seed(1), masks=[mask]
    )
    assert all(torch.equal(s[1::2], torch.zeros(2)) for s in seen) and all(s[0] != 0 for s in seen)
    assert torch.equal(grads[0][1::2], torch.zeros(2)) and torch.all(grads[0][0::2] != 0)


def test_a_pair_with_a_diverged_run_is_left_out():
    params = [torch.zeros(2)]
    calls = iter(range(100))

    def score() -> float:  # the first pair diverges; the others see a linear function
        return math.inf if next(calls) < 2 else float(params[0] @ torch.tensor([1.0, -1.0]))

    grads, scores = antithetic_gradient(params, score, pairs=3, sigma=0.1, generator=torch.Generator().manual_seed(2))
    assert math.isinf(scores[0]) and all(math.isfinite(s) for s in scores[2:])
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0


def test_scoring_all_perturbations_at_once_gives_the_estimate_of_one_at_a_time():
    params = [torch.tensor([0.3, -0.2]), torch.tensor([[1.5]])]

    def loss(values: list[Tensor]) -> float:
        return float(((values[0] - 1) ** 2).sum() + values[1].sum() ** 3)

    def estimate(**scorer) -> tuple[list[Tensor], list[float]]:
        generator = torch.Generator().manual_seed(4)
        return antithetic_gradient(params, **scorer, pairs=6, sigma=0.1, generator=generator, ranks=True)

    at_once = estimate(score_all=lambda perturbed: [loss(values) for values in perturbed])
    in_turn = estimate(score=lambda: loss(params))
    assert at_once[1] == in_turn[1]
    assert all(torch.equal(a, b) for a, b in zip(at_once[0], in_turn[0], strict=True))
    with pytest.raises(TypeError, match="score or score_all"):
        antithetic_gradient(params, pairs=1, sigma=0.1, generator=torch.Generator())


def es_config(**overrides) -> TrainConfig:
    settings = dict(meta_gradient="es", es_pairs=2, es_sigma=0.05, meta_loss="log", lr_schedules=["warmup-cosine"])
    return quick_config(**{**settings, **overrides})


def test_es_meta_training_moves_the_weights_resumes_exactly_and_says_so_on_the_card(tmp_path):
    whole = MetaTrainer(es_config(), tmp_path / "whole")
    start = {name: tensor.clone() for name, tensor in whole.network.state_dict().items()}
    whole.train(progress=False)
    assert any(not torch.equal(start[name], t) for name, t in whole.network.state_dict().items())
    assert all(math.isfinite(row["meta_loss"]) for row in whole.rows)
    card = (tmp_path / "whole" / "README.md").read_text()
    assert (
        "| meta-gradient | evolution strategies on whole runs: 2 antithetic pairs per iteration, sigma 0.05 |" in card
    )
    assert "| meta-loss | the final log loss of each run" in card

    MetaTrainer(es_config(iterations=2), tmp_path / "halves").train(progress=False)
    resumed = MetaTrainer(es_config(), tmp_path / "halves")
    resumed.train(resume=True, progress=False)
    for name, tensor in whole.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name


def test_es_on_the_end_of_each_run_moves_the_weights_resumes_exactly_and_says_so(tmp_path):
    settings = dict(task="teacher-student", horizon=40, meta_batch_size=1, meta_loss_from=0.75)
    whole = MetaTrainer(es_config(**settings), tmp_path / "whole")
    assert whole.config.meta_loss_start(40) == 30
    start = {name: tensor.clone() for name, tensor in whole.network.state_dict().items()}
    whole.train(progress=False)
    assert any(not torch.equal(start[name], t) for name, t in whole.network.state_dict().items())
    assert all(math.isfinite(row["meta_loss"]) for row in whole.rows)
    card = (tmp_path / "whole" / "README.md").read_text()
    assert "the first 0.75 of the horizon run once by the network as it is" in card

    MetaTrainer(es_config(**settings, iterations=2), tmp_path / "halves").train(progress=False)
    resumed = MetaTrainer(es_config(**settings), tmp_path / "halves")
    resumed.train(resume=True, progress=False)
    for name, tensor in whole.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name


def test_es_scores_the_end_of_a_run_as_the_whole_run_scores_it(tmp_path, monkeypatch):
    settings = dict(task="teacher-student", horizon=40, meta_loss_from=0.75, init_from="l2l-general-v6")
    trainer = MetaTrainer(es_config(**settings, network_config={}), tmp_path)
    trainer_module = importlib.import_module("learned_torch_optim.meta.trainer")
    runs, scores = [], []

    def advance(network, problem, params, steps, lr_factors=None, **resumed):
        runs.append((resumed.get("start", 0), steps))
        return bptt.advance(network, problem, params, steps, lr_factors, **resumed)

    def unperturbed(params, score, **_):
        scores.append(score())
        return [torch.zeros_like(p) for p in params], scores

    monkeypatch.setattr(trainer_module, "advance", advance)
    monkeypatch.setattr(trainer_module, "antithetic_gradient", unperturbed)
    problem = get_task("teacher-student").problem
    trainer._es_step(lambda: problem(3), 40, "warmup-cosine", 0.7)
    assert runs == [(0, 30), (30, 10)]
    curve = protocol.run_learned(trainer.network, problem(3), 40, 0.7, "warmup-cosine")
    assert scores[0] == pytest.approx(protocol.tail_mean(log_loss(curve), 0.1).item(), rel=1e-5)


@pytest.mark.parametrize("readout_only", [False, True])
def test_es_trains_only_the_added_input_when_told(tmp_path, readout_only):
    skip = {"preprocessing": "identity", "output_scale": 1.0, "hidden_size": 8, "readout_skip": True}
    MetaTrainer(quick_config(iterations=1, network_config=skip), tmp_path / "first").train(progress=False)
    start = CoordinatewiseLSTM.from_pretrained(tmp_path / "first")
    tuned = one_es_iteration(
        tmp_path / "tuned",
        init_from=str(tmp_path / "first"),
        network_config={"lr_decay_input": True},
        train_added_inputs_only=True,
        train_readout_only=readout_only,
    )
    assert_trained_only(tuned, start, {"readout.weight"} if readout_only else {"cells.0.weight_ih", "readout.weight"})


def one_es_iteration(tmp_path, **settings) -> MetaTrainer:
    """A fine-tune with large perturbations and steps after one ES iteration, so every weight it trains moves."""
    tuned = MetaTrainer(es_config(es_sigma=0.5, meta_lr=0.1, **settings), tmp_path)
    tuned.train_iteration()
    return tuned


def test_es_trains_only_the_added_inputs_magnitude_weight_when_told(tmp_path):
    tuned = one_es_iteration(
        tmp_path,
        init_from="l2l-general-v2",
        network_config={"lr_decay_input": True},
        train_added_inputs_only=True,
        train_readout_only=True,
        train_magnitude_only=True,
    )
    start = load_weights("l2l-general-v2")
    assert_trained_only(tuned, start, {"readout.weight"})
    trained, widened = tuned.network.readout.weight, widen(start, lr_decay_input=True).readout.weight
    assert torch.equal(trained[0], widened[0]) and not torch.equal(trained[1], widened[1])


def test_a_linear_direction_fine_tune_trains_only_the_read_out_weights_it_uses(tmp_path):
    tuned = one_es_iteration(
        tmp_path, init_from="l2l-general-v3", network_config={"linear_direction": True}, train_readout_only=True
    )
    start, trained = load_weights("l2l-general-v3").state_dict(), tuned.network.state_dict()
    assert all(torch.equal(trained[name], start[name]) for name in start if not name.startswith("readout."))
    used, _ = tuned.network.readout_masks()
    weight = trained["readout.weight"]
    assert torch.equal(weight[used == 0], torch.zeros(int((used == 0).sum()))) and trained["readout.bias"][0] == 0
    assert not torch.equal(weight[0, 20:24], start["readout.weight"][0, 20:24])
    assert not torch.equal(weight[1], start["readout.weight"][1])


def test_the_linear_direction_schedule_recipe_trains_one_weight(tmp_path):
    """The recipe of `l2l-general-v4` (docs/meta-training.md) perturbs the lr input's magnitude weight alone."""
    config = es_config(
        init_from="l2l-general-v2",
        network_config={"lr_decay_input": True, "linear_direction": True},
        train_added_inputs_only=True,
        train_readout_only=True,
        train_magnitude_only=True,
    )
    trainer = MetaTrainer(config, tmp_path)
    (mask,) = trainer.gradient_masks.values()
    assert mask.shape == trainer.network.readout.weight.shape and mask.sum() == 1 and mask[1, -1] == 1


def test_a_warm_up_through_an_existing_input_trains_its_magnitude_weight_and_bias(tmp_path):
    config = es_config(
        init_from="l2l-general-v4",
        network_config={},
        train_readout_only=True,
        train_magnitude_only=True,
        train_readout_inputs=["t100", "bias"],
        lr_schedules=["constant"],
    )
    trainer = MetaTrainer(config, tmp_path)
    network, trained = trainer.network, masks_by_name(trainer)
    column = network.hidden_size + network.input_names.index("t100")
    assert trained["readout.weight"].sum() == 1 and trained["readout.weight"][1, column] == 1
    assert trained["readout.bias"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="no input 't7'.*'t100'"):
        MetaTrainer(replace(config, train_readout_inputs=["t7"]), tmp_path / "unknown")
    with pytest.raises(ValueError, match="give both"):
        MetaTrainer(es_config(train_readout_inputs=["bias"]), tmp_path / "alone")


def test_a_magnitude_shift_moves_the_named_read_out_weights_of_the_start(tmp_path):
    config = es_config(init_from="l2l-general-v5", network_config={}, init_magnitude_shift=["t10=2.5", "bias=-4.5"])
    start = load_weights("l2l-general-v5")
    shifted = MetaTrainer(config, tmp_path).network
    column = start.hidden_size + start.input_names.index("t10")
    moved = shifted.readout.weight - start.readout.weight
    assert moved[1, column].item() == pytest.approx(2.5) and moved.abs().sum().item() == pytest.approx(2.5)
    assert (shifted.readout.bias - start.readout.bias).tolist() == pytest.approx([0.0, -4.5])
    assert torch.equal(shifted.cells[0].weight_ih, start.cells[0].weight_ih)
    for bad, match in (
        (["t10"], "'t10' is not NAME=VALUE"),
        (["bias=1", "bias=2"], "'bias=2' is not NAME=VALUE"),
        (["t10=nan"], "'t10=nan' is not NAME=VALUE"),
    ):
        with pytest.raises(ValueError, match=match):
            replace(config, init_magnitude_shift=bad)
    with pytest.raises(ValueError, match="init_magnitude_shift: no input 't7'"):
        MetaTrainer(replace(config, init_magnitude_shift=["t7=1"]), tmp_path / "unknown")
    with pytest.raises(ValueError, match="init_magnitude_shift needs init_from"):
        MetaTrainer(es_config(init_magnitude_shift=["bias=1"]), tmp_path / "fresh")


def test_a_hidden_gain_scales_only_the_magnitude_read_out_weights_on_the_lstm(tmp_path):
    config = es_config(init_from="l2l-general-v5", network_config={}, init_hidden_gain=0.5)
    start = load_weights("l2l-general-v5")
    scaled = MetaTrainer(config, tmp_path).network
    expected = start.readout.weight.clone()
    expected[1, : start.hidden_size] *= 0.5
    assert torch.equal(scaled.readout.weight, expected) and torch.equal(scaled.readout.bias, start.readout.bias)
    assert torch.equal(scaled.cells[0].weight_hh, start.cells[0].weight_hh)
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="init_hidden_gain must be a finite number >= 0"):
            replace(config, init_hidden_gain=bad)
    with pytest.raises(ValueError, match="init_hidden_gain needs init_from"):
        MetaTrainer(es_config(init_hidden_gain=0.5), tmp_path / "fresh")


def masks_by_name(trainer: MetaTrainer) -> dict[str, torch.Tensor]:
    """``trainer``'s gradient masks (1 where a weight trains) by parameter name; frozen parameters have none."""
    names = {id(p): name for name, p in trainer.network.named_parameters()}
    return {names[key]: mask for key, mask in trainer.gradient_masks.items()}


def assert_trained_only(tuned: MetaTrainer, start: CoordinatewiseLSTM, expected: set[str]) -> None:
    """``tuned``'s network moved from ``start`` widened with ``lr_decay_input`` in exactly the parameters
    ``expected``, and only where the added input's masks allow."""
    widened, masks = widen(start, lr_decay_input=True), added_weights(start, lr_decay_input=True)
    trained = tuned.network.state_dict()
    moved = set()
    for name, tensor in widened.state_dict().items():
        kept = masks[name] == 0
        assert torch.equal(trained[name][kept], tensor[kept]), name
        if not torch.equal(trained[name], tensor):
            moved.add(name)
    assert moved == expected


def test_magnitude_only_needs_readout_only_and_a_magnitude(tmp_path):
    with pytest.raises(ValueError, match="give both"):
        MetaTrainer(es_config(train_magnitude_only=True), tmp_path / "alone")
    additive = es_config(
        init_from="l2l-paper-quadratic",
        network_config={"lr_decay_input": True},
        train_added_inputs_only=True,
        train_readout_only=True,
        train_magnitude_only=True,
    )
    with pytest.raises(ValueError, match="'additive', which has no direction and magnitude"):
        MetaTrainer(additive, tmp_path / "additive")


def test_a_direction_only_fine_tune_perturbs_the_direction_weights_on_the_gradient_inputs(tmp_path):
    config = es_config(
        init_from="l2l-general-v6",
        network_config={},
        train_readout_only=True,
        train_direction_only=True,
        lr_schedules=["constant"],
    )
    trainer = MetaTrainer(config, tmp_path)
    network, trained = trainer.network, masks_by_name(trainer)
    first, gradient_inputs = network.hidden_size, ["g", "m0.5", "m0.9", "m0.99"]
    columns = [first + network.input_names.index(name) for name in gradient_inputs]
    assert set(trained) == {"readout.weight"}  # linear_direction: the direction has no bias
    assert trained["readout.weight"].nonzero().tolist() == [[0, column] for column in columns]
    with pytest.raises(ValueError, match="train_direction_only and train_magnitude_only leave nothing"):
        MetaTrainer(replace(config, train_magnitude_only=True), tmp_path / "both")
    with pytest.raises(ValueError, match="train_direction_only restricts train_readout_only: give both"):
        MetaTrainer(replace(config, train_readout_only=False), tmp_path / "alone")


def test_centred_ranks_run_from_minus_a_half_to_a_half_and_share_ties():
    assert centred_ranks([3.0, -1.0, 10.0]) == [0.0, -0.5, 0.5]
    assert centred_ranks([2.0, 2.0, 1.0, 5.0, 2.0]) == [0.0, 0.0, -0.5, 0.5, 0.0]
    assert centred_ranks([7.0]) == [0.0]


def test_ranked_estimates_do_not_depend_on_the_scale_of_the_loss():
    params = [torch.tensor([0.3, -0.2])]

    def estimate(scale: float, ranks: bool) -> Tensor:
        def score() -> float:
            return scale * float(((params[0] - torch.tensor([1.0, 1.0])) ** 2).sum())

        generator = torch.Generator().manual_seed(3)
        return antithetic_gradient(params, score, pairs=50, sigma=0.1, generator=generator, ranks=ranks)[0][0]

    assert torch.equal(estimate(1.0, ranks=True), estimate(1e4, ranks=True))
    assert not torch.allclose(estimate(1.0, ranks=False), estimate(1e4, ranks=False))
    descent = -estimate(1.0, ranks=True)  # still a descent direction: towards (1, 1)
    assert descent[0] > 0 and descent[1] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"es_pairs": 0}, "es_pairs must be at least 1"),
        ({"es_sigma": 0.0}, "es_sigma must be positive"),
        ({"second_derivatives": True}, "options of the BPTT meta-gradient"),
        ({"meta_gradient": "pes"}, "meta_gradient must be one of"),
        ({"meta_gradient": "bptt", "es_vectorize": True}, "es_vectorize .* needs meta_gradient='es'"),
        ({"es_vectorize": True, "network_rule": ["paper-cifar"]}, "one network"),
    ],
)
def test_bad_es_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        es_config(**overrides)
