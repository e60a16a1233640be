"""Evaluation: tuned baselines and the learned optimizer on the same problems, results files, cache and CLI."""

import json
import math
import sys

import pytest
import torch
from conftest import make_fake_mnist

from learned_torch_optim import (
    CoordinatewiseLSTM,
    LearnedOptimizer,
    NetworkRule,
    WeightsError,
    WeightSet,
    load_weight_set,
)
from learned_torch_optim.meta import Problem, Task, get_task
from learned_torch_optim.meta.cli import main as cli_main
from learned_torch_optim.meta.evaluation import (
    BASELINES,
    HALF_DECADES,
    EvaluationResult,
    OptimizerResult,
    RunResult,
    best_lr,
    descended,
    diverged,
    evaluate,
    final_loss,
    format_results_markdown,
    format_results_table,
    horizon_mean,
    horizon_sum,
    problem_seeds,
    run_learned,
    run_optimizer,
    tail_mean,
)

FAST = dict(problems=2, steps=10, progress=False)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Never touch the user's cache: the default cache dir lives under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tiny-weights"
    CoordinatewiseLSTM(preprocessing="identity", output_scale=1.0).save_pretrained(folder)
    return folder


class RecordingProblem(Problem):
    """``||theta - b_t||^2`` with minibatches ``b_t`` drawn from the seed; logs what it hands out."""

    def __init__(self, seed: int, log: list, dims: int = 3) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.theta0 = torch.randn(dims, generator=self.generator)
        self.record = {"seed": seed, "theta0": self.theta0.clone(), "batches": []}
        log.append(self.record)

    def init_params(self):
        return self.theta0.clone()

    def loss(self, params, batch):
        return (params - batch).pow(2).sum()

    def sample_batch(self):
        batch = torch.randn(self.theta0.shape, generator=self.generator)
        self.record["batches"].append(batch.clone())
        return batch


class RecordingTask(Task):
    name = "recording"

    def __init__(self) -> None:
        self.log: list[dict] = []

    def problem(self, seed):
        return RecordingProblem(seed, self.log)


def test_grid_is_half_decades_from_1e_4_to_1():
    assert len(HALF_DECADES) == 9
    assert HALF_DECADES[0] == 1e-4 and HALF_DECADES[-1] == 1.0
    assert HALF_DECADES[1] == 10**-3.5 and HALF_DECADES[3] == 10**-2.5
    assert set(BASELINES) == {"adam", "rmsprop", "sgd", "nag"}
    assert problem_seeds(0, 3) == problem_seeds(0, 5)[:3]
    assert not set(problem_seeds(0, 5)) & set(problem_seeds(1, 5))


def test_baselines_on_quadratics_are_tuned_by_the_summed_loss():
    result = evaluate(None, "quadratic", cache=False, **FAST)
    assert list(result.optimizers) == ["adam", "rmsprop", "sgd", "nag"]
    task = get_task("quadratic")
    for name, opt in result.optimizers.items():
        assert [run.lr for run in opt.runs] == list(HALF_DECADES)
        assert opt.best is not None and math.isfinite(opt.metric)
        assert opt.metric == min(run.metric for run in opt.runs)
        best = opt.best
        assert len(best.mean_curve) == 10 and len(best.metrics) == 2
        # The metric is the summed loss per problem, mean over problems; rerun problem 0 by hand.
        factory, lr = BASELINES[name].factory, best.lr
        curve = run_optimizer(task.problem(result.problem_seeds[0]), lambda p: factory(p, lr), steps=10)  # noqa: B023
        assert best.metrics[0] == curve.double().sum().item()
        assert best.final_losses[0] == curve[-1].item()
        assert best.metric == pytest.approx(sum(best.metrics) / 2)
        assert best.stderr == pytest.approx(best.std / math.sqrt(2))
    assert result.best_baseline in result.optimizers
    assert result.ratio_to_best_baseline(result.best_baseline) == 1.0


def test_every_optimizer_sees_the_same_problems_and_minibatches(tiny_weights):
    task = RecordingTask()
    evaluate(tiny_weights, task, problems=3, steps=4, lr_grid=(0.01, 0.1), cache=False, progress=False)
    runs = 1 + 4 * 2  # the learned optimizer at lr 1, four baselines at two lrs
    assert len(task.log) == runs * 3
    seeds = problem_seeds(0, 3)
    for run in range(runs):
        block = task.log[3 * run : 3 * run + 3]
        assert [record["seed"] for record in block] == seeds
        for record, reference in zip(block, task.log[:3]):
            assert torch.equal(record["theta0"], reference["theta0"])
            assert len(record["batches"]) == 4
            assert all(torch.equal(a, b) for a, b in zip(record["batches"], reference["batches"]))
    assert not torch.equal(task.log[0]["batches"][0], task.log[1]["batches"][0])  # different problems


def test_learned_curve_is_run_learned(tiny_weights):
    result = evaluate(tiny_weights, "quadratic", problems=1, steps=10, optimizers=(), progress=False)
    network = CoordinatewiseLSTM.from_pretrained(tiny_weights)
    expected = run_learned(network, get_task("quadratic").problem(result.problem_seeds[0]), 10)
    assert list(result.optimizers["learned"].best.mean_curve) == expected.double().tolist()
    assert result.weights["source"] == str(tiny_weights.resolve())
    assert result.ratio_to_best_baseline() is None  # no baseline to compare with


def run(lr, metrics):
    return RunResult(lr=lr, metrics=tuple(metrics), final_losses=tuple(metrics), mean_curve=(1.0,))


def test_lr_selection_takes_the_argmin_and_never_a_diverged_run():
    opt = OptimizerResult("sgd", "", [run(0.1, [5, 7]), run(0.3, [3, 4]), run(1.0, [1, math.nan]), run(3, [math.inf])])
    assert opt.best_lr == 0.3 and opt.metric == 3.5 and not opt.best_lr_at_grid_edge
    assert opt.runs[2].diverged and opt.runs[2].metric == math.inf and opt.runs[3].final_loss == math.inf
    assert OptimizerResult("sgd", "", [run(0.1, [2]), run(0.3, [1])]).best_lr_at_grid_edge
    tie = OptimizerResult("sgd", "", [run(0.1, [1, 1]), run(0.3, [1, 1])])
    assert tie.best_lr == 0.1
    assert OptimizerResult("sgd", "", [run(1.0, [math.inf])]).best is None


def test_diverging_lr_is_reported_as_inf_and_not_selected(tmp_path):
    result = evaluate(
        None, "quadratic", problems=2, steps=30, optimizers=("sgd",), lr_grid=(0.01, 1e3), cache=False, progress=False
    )
    sgd = result.optimizers["sgd"]
    assert sgd.runs[1].diverged and sgd.runs[1].metric == math.inf
    assert sgd.best_lr == 0.01
    all_diverged = evaluate(
        None, "quadratic", problems=2, steps=30, optimizers=("sgd",), lr_grid=(1e3, 1e4), cache=False, progress=False
    )
    assert all_diverged.optimizers["sgd"].best is None and all_diverged.best_baseline is None
    for res, out in ((result, tmp_path / "one"), (all_diverged, tmp_path / "all")):
        res.save(out)  # strict JSON: would raise on a NaN or inf
        data = json.loads((out / "results.json").read_text())
        entry = data["optimizers"]["sgd"]["lrs"][-1]
        assert entry["diverged"] is True and entry["metric"] is None
        assert "sgd" in format_results_table(res)
    assert json.loads((tmp_path / "all" / "results.json").read_text())["optimizers"]["sgd"]["diverged"] is True
    assert "diverged" in format_results_table(all_diverged)


def test_results_files(tmp_path, tiny_weights, monkeypatch):
    result = evaluate(tiny_weights, "quadratic", cache=False, **FAST)
    written = result.save(tmp_path / "out")
    assert {p.name for p in written} == {"results.json", "results.md", "curves.png"}
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"task", "split", "steps", "problems", "seed", "problem_seeds", "weights", "best_baseline"} <= set(data)
    assert (data["task"], data["steps"], data["problems"], data["seed"]) == ("quadratic", 10, 2, 0)
    assert list(data["optimizers"]) == ["learned", "adam", "rmsprop", "sgd", "nag"]
    for entry in data["optimizers"].values():
        for key in ("best_lr", "metric", "std", "stderr", "final_loss", "lrs", "mean_curve", "ratio_to_best_baseline"):
            assert key in entry
        assert len(entry["mean_curve"]) == 10
    learned = data["optimizers"]["learned"]
    assert learned["best_lr"] == 1.0 and learned["ratio_to_best_baseline"] == pytest.approx(
        result.optimizers["learned"].metric / result.optimizers[result.best_baseline].metric
    )
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*.tmp"))
    markdown = format_results_markdown(result)
    assert markdown == format_results_markdown(data)
    assert "| optimizer | best lr |" in markdown and markdown.count("\n| ") == 1 + 1 + 5
    assert (tmp_path / "out" / "results.md").read_text().strip() == markdown

    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        written = result.save(tmp_path / "no-plot")
    assert (tmp_path / "no-plot" / "results.json").exists() and not (tmp_path / "no-plot" / "curves.png").exists()


class CountingTask(Task):
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def problem(self, seed):
        self.calls += 1
        return get_task("quadratic").problem(seed)


def test_baseline_cache_hits_and_invalidation(tmp_path, tiny_weights):
    cache_dir = tmp_path / "cache"
    task = CountingTask()
    options = dict(lr_grid=(0.01, 0.1), optimizers=("adam", "sgd"), problems=2, steps=5, progress=False)
    first = evaluate(None, task, cache_dir=cache_dir, task_cache_key="counting-v1", **options)
    assert task.calls == 8 and len(list(cache_dir.iterdir())) == 4
    again = evaluate(None, task, cache_dir=cache_dir, task_cache_key="counting-v1", **options)
    assert task.calls == 8
    assert all(run.cached for opt in again.optimizers.values() for run in opt.runs)
    assert again.to_dict() == first.to_dict()
    evaluate(tiny_weights, task, cache_dir=cache_dir, task_cache_key="counting-v1", **options)
    assert task.calls == 8 + 2  # new weights: only the learned optimizer runs
    evaluate(None, task, cache_dir=cache_dir, task_cache_key="counting-v1", **{**options, "steps": 6})
    assert task.calls == 18  # another horizon: everything reruns
    evaluate(None, task, cache_dir=cache_dir, task_cache_key="counting-v1", **{**options, "seed": 1})
    assert task.calls == 26
    evaluate(None, task, cache_dir=cache_dir, **options)
    evaluate(None, task, cache_dir=cache_dir, **options)
    assert task.calls == 42  # a user task without a cache key is never cached
    next(cache_dir.glob("adam-*.json")).write_text("{not json")
    evaluate(None, task, cache_dir=cache_dir, task_cache_key="counting-v1", **options)
    assert task.calls == 44  # a corrupt entry is a miss, recomputed

    builtin = evaluate(None, "quadratic", optimizers=("sgd",), lr_grid=(0.01,), **FAST)  # the default cache dir
    assert not builtin.optimizers["sgd"].runs[0].cached
    assert evaluate(None, "quadratic", optimizers=("sgd",), lr_grid=(0.01,), **FAST).optimizers["sgd"].runs[0].cached
    assert list((tmp_path / "xdg-cache" / "learned_torch_optim" / "baselines").glob("sgd-*.json"))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="no-such-task"):
        evaluate(None, "no-such-task", progress=False)
    with pytest.raises(ValueError, match="problems"):
        evaluate(None, "quadratic", problems=0, progress=False)
    with pytest.raises(ValueError, match="'adamw'"):
        evaluate(None, "quadratic", optimizers=("adamw",), progress=False)
    with pytest.raises(WeightsError, match="missing-weights"):
        evaluate(str(tmp_path / "missing-weights"), "quadratic", progress=False)


def test_cli_evaluate_quadratic(tmp_path, tiny_weights, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--weights", str(tiny_weights), "--task", "quadratic", "--problems", "2", "--steps", "10"]
    assert cli_main([*argv, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for needle in ("optimizer", "best lr", "learned", "adam", "nag", "ratio", "results.json"):
        assert needle in printed
    data = json.loads((out / "results.json").read_text())
    assert data["optimizers"]["learned"]["ratio_to_best_baseline"] is not None
    assert (out / "curves.png").is_file()

    assert cli_main(["evaluate", "--weights", str(tmp_path / "nope"), "--task", "quadratic", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    for bad in (["--problems", "0"], ["--task", "no-such-task"]):
        with pytest.raises(SystemExit):
            cli_main(["evaluate", "--task", "quadratic", "--out", str(out), *bad])
        err = capsys.readouterr().err
        assert bad[0] in err and bad[1] in err


def test_cli_evaluate_mnist_on_generated_files(tmp_path, tiny_weights, capsys):
    data_dir = make_fake_mnist(tmp_path / "data")
    out = tmp_path / "eval"
    argv = ["evaluate", "--weights", str(tiny_weights), "--task", "mnist-mlp", "--data-dir", str(data_dir)]
    assert cli_main([*argv, "--problems", "2", "--steps", "5", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["split"] == "test" and data["task"] == "mnist-mlp"
    assert set(data["optimizers"]) == {"learned", "adam", "rmsprop", "sgd", "nag"}
    assert (out / "curves.png").is_file()
    assert "mnist-mlp (test split)" in capsys.readouterr().out


def test_results_json_loads_back_into_the_table(tmp_path):
    result = evaluate(None, "quadratic", optimizers=("adam",), cache=False, **FAST)
    assert isinstance(result, EvaluationResult)
    result.save(tmp_path, plot=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert format_results_table(data) == format_results_table(result)


def test_protocol_scores_and_divergence():
    curves = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, math.nan, 1.0, 1.0, 1.0]])
    assert diverged(curves).tolist() == [False, False, True]
    assert horizon_sum(curves).tolist() == [10.0, 15.0, math.inf]
    assert horizon_mean(curves).tolist() == [2.0, 3.0, math.inf]
    assert final_loss(curves).tolist() == [0.0, 5.0, math.inf]
    assert tail_mean(curves, 0.4).tolist() == [0.5, 4.5, math.inf]
    assert tail_mean(curves, 0.01).tolist() == [0.0, 5.0, math.inf]  # at least the last step
    assert tail_mean(curves[:, 2:], 0.4, 5).tolist() == [0.5, 4.5, 1.0]  # the end of a run of 5 steps
    with pytest.raises(ValueError, match="last 2 steps of a run of 5, from a curve of 1"):
        tail_mean(curves[:, 4:], 0.4, 5)
    assert descended(curves, 0.4).tolist() == [True, False, False]
    assert best_lr({0.1: 2.0, 0.3: 1.0, 1.0: 1.0, 3.0: math.inf}) == 0.3
    assert best_lr({1.0: math.inf, 3.0: math.nan}) is None


def test_a_run_stops_at_its_first_non_finite_loss():
    steps = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    curve = run_optimizer(get_task("quadratic").problem(0), lambda p: CountingSGD(p, lr=1e3), steps=40)
    first = int((~torch.isfinite(curve)).nonzero()[0])
    assert first < 39 and len(steps) == first and torch.isnan(curve[first + 1 :]).all()


@pytest.fixture
def weight_set(tmp_path):
    """Two networks for the weights and the biases of a model, at nominal lrs in the two units."""
    torch.manual_seed(0)
    networks = {
        "w": CoordinatewiseLSTM(preprocessing="identity", output_scale=0.01, hidden_size=6),
        "b": CoordinatewiseLSTM(preprocessing="identity", output_scale=1.0, hidden_size=4, nominal_lr=1e-3),
    }
    folder = tmp_path / "set"
    WeightSet(networks, NetworkRule((("[0-9]*.weight", "w"),), "b")).save_pretrained(folder)
    return folder


def test_a_weight_set_runs_each_network_at_its_own_lr_on_named_parameters(tmp_path, weight_set, tiny_weights):
    data_dir = str(make_fake_mnist(tmp_path / "data"))
    options = dict(optimizers=("adam",), lr_grid=(0.01,), data_dir=data_dir, problems=1, steps=5, progress=False)
    single = evaluate(tiny_weights, "mnist-mlp", **options)
    result = evaluate(str(weight_set), "mnist-mlp", learned_lr_grid=(1.0, 0.5), **options)
    loaded = load_weight_set(weight_set)
    assert result.weights["sha256"] == loaded.weights_identity.sha256 != single.weights["sha256"]
    assert result.weights["networks"] == {n: net.weights_identity.sha256 for n, net in loaded.networks.items()}
    assert result.optimizers["adam"].runs[0].cached  # the baselines do not depend on the weights
    assert "weight set of w, b" in result.optimizers["learned"].description

    def by_hand(named, factor):
        """The set's split written out: each network on its parameters at factor times its nominal_lr."""
        w, b = loaded.networks["w"], loaded.networks["b"]
        weights = [p for name, p in named if name.endswith("weight")]
        biases = [p for name, p in named if name.endswith("bias")]
        groups = [{"params": weights, "weights": w, "lr": factor}, {"params": biases, "lr": factor * 1e-3}]
        return LearnedOptimizer(groups, weights=b)

    task = get_task("mnist-mlp", split="test", data_dir=data_dir)
    for run in result.optimizers["learned"].runs:
        expected = run_optimizer(task.problem(result.problem_seeds[0]), lambda p: by_hand(p, run.lr), 5, named=True)  # noqa: B023
        assert list(run.mean_curve) == expected.double().tolist()
    assert result.optimizers["learned"].runs[0].mean_curve != result.optimizers["learned"].runs[1].mean_curve

    data = result.to_dict()
    assert data["weights_networks"] == result.weights["networks"] and single.to_dict()["weights_networks"] is None
    assert f"weight set `{loaded.weights_identity.source}`" in format_results_markdown(data)
    assert "`w`, `b`" in format_results_markdown(data)


def test_a_weight_set_on_a_task_without_parameter_names_is_refused_naming_both(tmp_path, weight_set, capsys):
    argv = ["evaluate", "--weights", str(weight_set), "--task", "quadratic", "--out", str(tmp_path / "out")]
    assert cli_main([*argv, "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert str(weight_set) in error and "'quadratic'" in error and "do not name their parameters" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="QuadraticProblems does not name its parameters"):
        run_learned(load_weight_set(weight_set), get_task("quadratic").problem(0), 3)
