"""The meta-trainer: golden values from the original implementation, tasks, data, CLI, checkpoints and resume."""

import json
import math
import os
import re
from dataclasses import replace

import pytest
import torch
from conftest import make_fake_mnist, quick_config, train_until_killed

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_torch_optim.meta import MetaTrainer, ModuleTask, Problem, Task, TrainConfig, get_task, unroll
from learned_torch_optim.meta.bptt import advance
from learned_torch_optim.meta.cli import NETWORK_OPTIONS, SETTINGS, build_parser, network_default, train_config
from learned_torch_optim.meta.cli import main as cli_main
from learned_torch_optim.meta.data import DataChecksumError, DataNotFoundError, load_image_classification, read_idx
from learned_torch_optim.meta.evaluation.protocol import run_learned
from learned_torch_optim.meta.schedules import lr_factors
from learned_torch_optim.meta.trainer import changed_settings, meta_iteration
from learned_torch_optim.network import lr_inputs
from learned_torch_optim.weights import load_weights


class Square(Problem):
    """f(x) = x^2 from x0 = 1: the original implementation's 'simple' problem."""

    def init_params(self):
        return torch.ones(1)

    def loss(self, params, batch):
        return params.pow(2).sum()


def linear_identity_network() -> CoordinatewiseLSTM:
    network = CoordinatewiseLSTM(num_layers=0, preprocessing="identity", output_scale=1.0)
    torch.nn.init.zeros_(network.readout.weight)
    torch.nn.init.zeros_(network.readout.bias)
    return network


def test_golden_two_unrolls_of_five_steps():
    network = linear_identity_network()
    meta_optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    params, state = Square().init_params(), network.initial_state(1)
    result = unroll(network, Square(), params, state, 5)
    assert result.params.item() == 1.0
    meta_optimizer.zero_grad()
    result.meta_loss.backward()
    meta_optimizer.step()
    assert network.readout.weight.item() == pytest.approx(-0.01, abs=1e-7)
    assert network.readout.bias.item() == pytest.approx(-0.01, abs=1e-7)
    second = unroll(network, Square(), result.params, result.state, 5)
    assert second.params.item() == pytest.approx(0.8559, abs=1e-4)
    assert Square().loss(second.params, None).item() == pytest.approx(0.7325327, abs=1e-4)


@pytest.mark.slow
def test_golden_converges_below_1e_5_within_500_epochs():
    network = linear_identity_network()
    meta_optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    final_cost = None
    for _ in range(500):
        meta_iteration(network, meta_optimizer, Square(), horizon=100, unroll_length=20)
        with torch.no_grad():
            x = torch.ones(1)
            for _ in range(100):
                update, _ = network(2 * x, network.initial_state(1))
                x = x + update
            final_cost = x.pow(2).item()
        if final_cost < 1e-5:
            break
    assert final_cost < 1e-5


def test_advance_takes_the_steps_unroll_takes():
    network = load_weights("l2l-general-v6")
    factors = 0.5 * lr_factors("warmup-cosine", 30)
    problem = get_task("quadratic").problem(3)
    params = problem.init_params()
    fast = advance(network, problem, params, 30, factors)
    problem = get_task("quadratic").problem(3)
    states = lr_inputs(factors, factors[0], factors.cummax(dim=0).values)
    reference = unroll(network, problem, params, network.initial_state(10), 30, lr_factors=factors, lr_states=states)
    torch.testing.assert_close(fast[0], reference.params.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast[1], reference.state.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast[2], reference.losses, rtol=1e-4, atol=1e-6)


def test_advance_goes_on_from_where_a_run_stopped():
    network = load_weights("l2l-general-v6")
    factors = 0.5 * lr_factors("warmup-cosine", 30)
    task = get_task("teacher-student")
    whole = advance(network, task.problem(3), task.problem(3).init_params(), 30, factors)
    curve = run_learned(network, task.problem(3), 30, 0.5, "warmup-cosine")
    torch.testing.assert_close(whole[2], curve, rtol=1e-5, atol=1e-7)
    problem = task.problem(3)
    params, state, _ = advance(network, problem, problem.init_params(), 12, factors)
    rest = task.problem(3)
    for _ in range(12):
        rest.sample_batch()
    end = advance(network, rest, params, 18, factors, start=12, state=state)
    for resumed, straight in zip(end, (whole[0], whole[1], whole[2][12:]), strict=True):
        torch.testing.assert_close(resumed, straight, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="LSTM state it had there"):
        advance(network, rest, params, 1, factors, start=12)


def test_meta_loss_from_meta_trains_on_the_end_of_the_horizon_alone(tmp_path):
    def meta_gradients(meta_loss_start: int) -> tuple[float, list[list[torch.Tensor]]]:
        torch.manual_seed(0)
        network = CoordinatewiseLSTM(preprocessing="identity", hidden_size=4, output_scale=0.1, lr_decay_input=True)
        meta_optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
        gradients = []
        meta_optimizer.register_step_pre_hook(
            lambda *args: gradients.append([p.grad.clone() for p in network.parameters()])
        )
        problem = get_task("quadratic").problem(0)
        loss = meta_iteration(
            network,
            meta_optimizer,
            problem,
            horizon=40,
            unroll_length=10,
            meta_loss_start=meta_loss_start,
            lr_factors=lr_factors("warmup-cosine", 40),
        )
        return loss, gradients

    whole, every = meta_gradients(0)
    end, last = meta_gradients(30)
    assert len(every) == 4 and len(last) == 1 and end == pytest.approx(whole, rel=1e-4)
    for expected, actual in zip(every[-1], last[0], strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of unroll_length"):
        meta_gradients(25)
    config = quick_config(meta_loss_from=0.58, horizon=100, unroll=2, lr_schedules=["warmup-cosine"])
    assert config.meta_loss_start(100) == 58
    trainer = MetaTrainer(quick_config(meta_loss_from=0.5, lr_schedules=["warmup-cosine"]), tmp_path)
    trainer.train(progress=False)
    assert "after the first 0.5 of the horizon" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"meta_loss_from": 1.0}, r"in \[0, 1\)"),
        ({"meta_loss_from": 0.5, "meta_gradient": "es", "es_vectorize": True}, "no es_vectorize"),
        ({"meta_loss_from": 0.95, "meta_gradient": "es"}, "at most 0.9"),
        ({"meta_loss_from": 0.5, "network_rule": ["*bias=biases", "weights"]}, "no network_rule"),
    ],
)
def test_bad_meta_loss_from_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        quick_config(**overrides)


def test_module_task_gradients_match_the_module():
    torch.manual_seed(0)
    task = ModuleTask(
        "user-mlp",
        model_factory=lambda gen: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)),
        loss_fn=torch.nn.functional.mse_loss,
        batch_sampler=lambda gen: (torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)),
    )
    problem = task.problem(seed=7)
    params = problem.init_params().requires_grad_(True)
    batch = problem.sample_batch()
    (grad,) = torch.autograd.grad(problem.loss(params, batch), params)
    model = problem.module
    model.zero_grad()
    torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
    torch.testing.assert_close(grad, torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.equal(task.problem(seed=7).sample_batch()[0], task.problem(seed=7).sample_batch()[0])


def test_quadratic_task_is_the_paper_problem():
    problem = get_task("quadratic").problem(3)
    params = problem.init_params()
    assert params.shape == (10,)
    expected = (problem.W[0] @ params - problem.y[0]).pow(2).sum()
    torch.testing.assert_close(problem.loss(params, None), expected)
    several = get_task("quadratic").problems([3, 4])
    assert several.num_problems == 2 and several.init_params().shape == (20,)


def test_idx_reader_and_mnist_task_on_generated_files(tmp_path):
    root = make_fake_mnist(tmp_path)
    images, labels = load_image_classification("mnist", "train", str(root))
    assert images.shape == (64, 28, 28) and labels.shape == (64,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    raw = read_idx(root / "mnist" / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(images, torch.tensor(raw).float() / 255)
    problem = get_task("mnist-mlp-2layer", data_dir=str(root)).problem(0)
    assert problem.init_params().numel() == 784 * 20 + 20 + 20 * 20 + 20 + 20 * 10 + 10
    assert problem.init_params().std() < 0.02
    inputs, targets = problem.sample_batch()
    assert inputs.shape == (128, 784) and targets.shape == (128,)


def test_missing_data_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load_image_classification("mnist", "test", str(tmp_path / "empty"))


def test_a_truncated_or_unlisted_data_file_is_refused_by_name(tmp_path):
    root = make_fake_mnist(tmp_path / "data")
    images = root / "mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])
    truncated = f"{re.escape(str(images))}: sha256 .* listed in .*SHA256SUMS; the file is truncated"
    with pytest.raises(DataChecksumError, match=truncated):
        load_image_classification("mnist", "train", str(root))
    (root / "mnist" / "SHA256SUMS").unlink()
    with pytest.raises(DataChecksumError, match="that of the standard mnist file") as error:
        load_image_classification("mnist", "train", str(root))
    assert str(images) in str(error.value) and "delete it" in str(error.value)
    (root / "mnist" / "SHA256SUMS").write_text("not-a-hash  train-images-idx3-ubyte.gz\n")
    with pytest.raises(DataChecksumError, match="SHA256SUMS, line 1"):
        load_image_classification("mnist", "train", str(root))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_gzip_file_is_named(tmp_path, damage):
    images = make_fake_mnist(tmp_path) / "mnist" / "train-images-idx3-ubyte.gz"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"garbage" * 100)
    with pytest.raises(ValueError, match=f"{re.escape(str(images))}: not a whole gzip file .* replace it"):
        read_idx(images)


def test_a_missing_data_file_names_the_data_dir_given(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    given = tmp_path / "given"
    with pytest.raises(DataNotFoundError) as error:
        load_image_classification("mnist", "test", str(given))
    assert f"Put the standard file at {given / 'mnist' / 't10k-images-idx3-ubyte.gz'}" in str(error.value)


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="no-such-task"):
        get_task("no-such-task")


def test_killed_run_resumes_exactly(tmp_path):
    straight = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "straight")
    straight.train(progress=False)

    killed = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "resumed")
    train_until_killed(killed, 5)  # checkpoint after iteration 4, iteration 5 done and lost, killed inside 6
    resumed = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "resumed")
    resumed.train(resume=True, progress=False)

    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    for name, tensor in straight.best_state.items():
        assert torch.equal(tensor, resumed.best_state[name]), name

    def strip(rows):
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]

    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert strip([json.loads(line) for line in lines]) == strip(straight.rows)


def test_a_fine_tune_killed_in_its_first_iteration_keeps_the_validation_of_its_start(tmp_path, monkeypatch):
    config = quick_config(init_from="l2l-paper-quadratic", network_config={}, iterations=2)
    train_until_killed(MetaTrainer(config, tmp_path / "resumed"), 0)
    validations = []
    monkeypatch.setattr(MetaTrainer, "validate", lambda self: validations.append(self.iteration) or 1.0)
    resumed = MetaTrainer(config, tmp_path / "resumed")
    resumed.train(resume=True, progress=False)
    assert validations == [2]  # the start's validation came from the checkpoint
    assert [row["iteration"] for row in resumed.rows] == [0, 1, 2] and resumed.rows[0]["validation_loss"] != 1.0


def test_a_run_from_a_gpu_machine_resumes_on_the_cpu(tmp_path):
    MetaTrainer(quick_config(iterations=1), tmp_path).train(progress=False)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["device"] = "cuda"  # as a GPU machine wrote it; CUDA need not exist here
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    resumed = MetaTrainer(quick_config(iterations=2), tmp_path)
    resumed.train(resume=True, progress=False)
    assert resumed.iteration == 2


def test_a_stopped_run_is_finished_where_it_stopped_by_resuming_with_those_iterations(tmp_path):
    config = quick_config(iterations=10, validate_every=10)
    train_until_killed(MetaTrainer(config, tmp_path), 3)
    finished = MetaTrainer(replace(config, iterations=3), tmp_path)
    finished.train(resume=True, progress=False)
    assert [row["iteration"] for row in finished.rows] == [1, 2, 3] and "validation_loss" in finished.rows[-1]
    assert finished.best_metric == finished.rows[-1]["validation_loss"] < math.inf
    saved = CoordinatewiseLSTM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(saved[name], tensor) for name, tensor in finished.network.state_dict().items())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "validation_loss" in json.loads(lines[-1])
    (tmp_path / "metrics.jsonl").unlink()  # a lost log: the checkpoint alone says where the run is
    again = MetaTrainer(replace(config, iterations=3), tmp_path)
    again.train(resume=True, progress=False)
    assert [row["iteration"] for row in again.rows] == [3] and "validation_loss" in again.rows[-1]


def test_zero_iterations_validate_a_start_that_a_resumed_run_then_trains(tmp_path, monkeypatch):
    config = quick_config(init_from="l2l-paper-quadratic", network_config={}, iterations=0, meta_lr_schedule="cosine")
    start = MetaTrainer(config, tmp_path)
    start.train(progress=False)
    assert [row["iteration"] for row in start.rows] == [0] and (tmp_path / "checkpoint.pt").exists()
    assert (tmp_path / "model.safetensors").exists()  # the start's weights, validated
    validations = []
    original = MetaTrainer.validate
    monkeypatch.setattr(MetaTrainer, "validate", lambda self: validations.append(self.iteration) or original(self))
    resumed = MetaTrainer(replace(config, iterations=2), tmp_path)
    resumed.train(resume=True, progress=False)
    assert validations == [2] and [row["iteration"] for row in resumed.rows] == [0, 1, 2]  # under cosine too
    with pytest.raises(ValueError, match=r"iterations must be at least 1 \(0 with init_from"):
        quick_config(iterations=0)


def test_existing_run_needs_resume(tmp_path):
    MetaTrainer(quick_config(iterations=1), tmp_path).train(progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        MetaTrainer(quick_config(iterations=2), tmp_path).train(progress=False)


def test_cli_train_writes_weights_the_optimizer_loads(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--task",
            "quadratic",
            "--out",
            str(out),
            "--iterations",
            "3",
            "--horizon",
            "20",
            "--unroll",
            "10",
            "--meta-batch-size",
            "2",
            "--validation-problems",
            "2",
            "--preprocessing",
            "identity",
            "--output-scale",
            "1.0",
            "--no-progress",
        ]
    )
    assert code == 0
    assert {"config.json", "model.safetensors", "README.md", "checkpoint.pt", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    for needle in (
        "horizon",
        "unroll",
        "Adam, lr 0.001",
        "| iterations | 3 |",
        "| seed | 0 |",
        "wall time",
        "learned-torch-optim train",
        "| optimizee gradients in the meta-gradient | constants (paper) |",
    ):
        assert needle in card
    param = torch.nn.Parameter(torch.ones(10))
    param.grad = torch.ones(10)
    LearnedOptimizer([param], weights=str(out)).step()
    assert "weights written to" in capsys.readouterr().out

    tune = ["train", "--task", "quadratic", "--out", str(tmp_path / "tuned"), "--iterations", "1", "--horizon", "20"]
    tune += ["--unroll", "10", "--meta-batch-size", "2", "--validation-problems", "1", "--no-progress"]
    with pytest.raises(SystemExit, match="drop --preprocessing, --output-scale"):
        cli_main([*tune, "--init-from", str(out), "--preprocessing", "identity", "--output-scale", "1.0"])
    assert cli_main([*tune, "--init-from", str(out), "--validation-horizon", "30", "--step-timescales", "500"]) == 0
    tuned_card = (tmp_path / "tuned" / "README.md").read_text()
    assert f"from weights `{out}`" in tuned_card and "1, 30 steps each" in tuned_card
    assert cli_main([*tune, "--out", str(tmp_path / "exact"), "--second-derivatives"]) == 0
    exact_card = (tmp_path / "exact" / "README.md").read_text()
    assert "| optimizee gradients in the meta-gradient | differentiated (second derivatives) |" in exact_card
    assert CoordinatewiseLSTM.from_pretrained(tmp_path / "tuned").input_names == ["g", "t500"]


def test_cli_list_and_bad_arguments(capsys):
    assert cli_main(["list"]) == 0
    assert "mnist-mlp-relu" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["train", "--task", "nope", "--out", "x"])


def test_train_flags_are_the_settings_and_network_options_with_their_defaults(capsys):
    argv = ["train", "--task", "quadratic", "--out", "run"]
    config = train_config(build_parser().parse_args(argv), argv, "cpu")
    assert replace(config, network_config={}, command="") == TrainConfig(task="quadratic")
    assert config.network_config == {name: network_default(name) for name in NETWORK_OPTIONS}
    assert CoordinatewiseLSTM(**config.network_config).config == CoordinatewiseLSTM().config
    assert config.command == "learned-torch-optim train --task quadratic --out run"
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    shown = capsys.readouterr().out
    named = [name for name in [*SETTINGS, *NETWORK_OPTIONS] if name not in ("network_config", "command")]
    assert all(re.search(rf"\s{flag}\s", shown) for flag in ("--" + name.replace("_", "-") for name in named))


MUST_KEEP_ON_RESUME = {  # for every setting --resume must keep, a value other than quick_config's
    "task": "quadratic-ill",
    "horizon": 40,
    "horizon_curriculum": [10, 20],
    "init": "forget_bias",
    "init_from": "l2l-paper-quadratic",
    "train_added_inputs_only": True,
    "train_readout_only": True,
    "train_magnitude_only": True,
    "train_direction_only": True,
    "train_readout_inputs": ["bias"],
    "init_magnitude_shift": ["bias=-1"],
    "init_hidden_gain": 0.5,
    "network_rule": ["paper-cifar"],
    "param_scale": 2.0,
    "lr_schedules": ["warmup-cosine"],
    "lr_factor_range": 3.0,
    "meta_gradient": "es",
    "unroll": 5,
    "es_pairs": 3,
    "es_sigma": 0.1,
    "es_ranks": True,
    "meta_lr": 1e-2,
    "meta_lr_schedule": "cosine",
    "clip_grad_norm": 1.0,
    "meta_loss": "log",
    "meta_loss_from": 0.5,
    "meta_loss_final": True,
    "second_derivatives": True,
    "meta_batch_size": 3,
    "seed": 1,
    "validation_problems": 3,
    "validation_horizon": 30,
    "validation_metric": "final",
    "validation_per_family": True,
    "validate_every": 3,
    "network_config": {"preprocessing": "identity", "output_scale": 1.0, "hidden_size": 9},
}


def test_resume_refuses_a_change_of_every_setting_but_those_declared_changeable():
    saved = quick_config()
    changeable = {name for name, setting in SETTINGS.items() if setting.metadata["may_change_on_resume"]}
    assert changeable == {"iterations", "checkpoint_every", "data_dir", "device", "es_vectorize", "command"}
    assert set(MUST_KEEP_ON_RESUME) == set(SETTINGS) - changeable
    for name, value in MUST_KEEP_ON_RESUME.items():
        assert changed_settings(saved, replace(saved, **{name: value})) == [name]
    others = dict(iterations=9, checkpoint_every=3, data_dir="elsewhere", command="learned-torch-optim train")
    spelled_out = {**saved.network_config, "momentum_decays": [], "output": "additive"}
    assert changed_settings(saved, replace(saved, network_config=spelled_out, **others)) == []
    stored = saved.to_dict()  # checkpoints keep the keys they had before the fields were renamed
    assert {"network", "init_weights"} <= set(stored) and TrainConfig.from_dict(stored) == saved


def test_the_card_has_a_row_for_every_setting_that_declares_one(tmp_path):
    MetaTrainer(quick_config(iterations=1), tmp_path).train(progress=False)
    card = (tmp_path / "README.md").read_text()
    rows = [line.split(" | ")[0].removeprefix("| ") for line in card.splitlines() if line.startswith("| ")]
    labels = [setting.metadata["card"] for setting in SETTINGS.values() if setting.metadata["card"] is not None]
    labels = [label if isinstance(label, str) else label[0] for label in labels]
    assert rows[2 : 2 + len(labels)] == labels
    assert "| problems per iteration | 4 |" in card and "| horizon curriculum (equal stages) | none |" in card


class Shifted(Task):
    name = "shifted"

    def problem(self, seed):
        return Square()


def test_user_task_meta_trains(tmp_path):
    trainer = MetaTrainer(quick_config(task="square", meta_batch_size=1), tmp_path, task=Shifted())
    trainer.train(progress=False)
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"unroll": 1, "horizon": 10}, "unroll"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
        ({"horizon": 25}, "horizon"),
    ],
)
def test_bad_training_settings_are_named(overrides, name):
    with pytest.raises(ValueError, match=name):
        quick_config(**overrides)


def test_resume_with_other_validation_settings_is_refused(tmp_path):
    MetaTrainer(quick_config(iterations=1), tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="validation_problems"):
        MetaTrainer(quick_config(iterations=2, validation_problems=3), tmp_path).train(resume=True, progress=False)


@pytest.mark.parametrize("second_derivatives", [False, True])
def test_second_derivatives_give_the_exact_meta_gradient(second_derivatives):
    """f(x) = x^2 from x = 1 with u = w g, w = -0.1: x_t = a^t with a = 1 + 2w, L = sum_{t<5} a^(2t).  Exactly,
    dL/dw = sum_t 4t a^(2t-1); with the gradients as constants (the paper) dx_t/dw = sum_{s<t} 2 a^s instead."""
    network = linear_identity_network().double()
    with torch.no_grad():
        network.readout.weight.fill_(-0.1)
    a = 0.8
    if second_derivatives:
        expected = sum(4 * t * a ** (2 * t - 1) for t in range(5))
    else:
        expected = sum(2 * a**t * sum(2 * a**s for s in range(t)) for t in range(5))
    start = torch.ones(1, dtype=torch.float64)
    result = unroll(
        network, Square(), start, network.initial_state(1).double(), 5, second_derivatives=second_derivatives
    )
    result.meta_loss.backward()
    assert network.readout.weight.grad.item() == pytest.approx(expected, rel=1e-12)


def test_meta_loss_final_adds_the_loss_after_the_last_update():
    """Golden first unroll with f(theta_T) too: dL/dw = sum_{t=0..5} 2 x (2t) = 60, dL/db = 30 at x = 1."""
    network = linear_identity_network()
    result = unroll(network, Square(), Square().init_params(), network.initial_state(1), 5, include_final=True)
    result.meta_loss.backward()
    assert network.readout.weight.grad.item() == pytest.approx(60.0)
    assert network.readout.bias.grad.item() == pytest.approx(30.0)
    assert result.meta_loss.item() == pytest.approx(6.0)


def test_run_files_get_the_mode_open_gives(tmp_path):
    umask = os.umask(0o027)
    try:
        MetaTrainer(quick_config(iterations=1), tmp_path).train(progress=False)
    finally:
        os.umask(umask)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    assert modes == dict.fromkeys(
        ["config.json", "model.safetensors", "README.md", "checkpoint.pt", "metrics.jsonl"], oct(0o640)
    )
