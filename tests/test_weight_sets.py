"""Weight sets: several networks loaded by one name, each running the parameters a rule gives it by name (the
paper's CIFAR-10 optimizer, section 3.3), through the optimizer and the meta-trainer."""

import copy
import hashlib
import io
import json
import time
import warnings

import pytest
import torch
from conftest import quick_config

from learned_torch_optim import (
    CoordinatewiseLSTM,
    LearnedOptimizer,
    NetworkRule,
    WeightsError,
    WeightSet,
    list_pretrained,
    load_weight_set,
    load_weights,
)
from learned_torch_optim import weights as weights_module
from learned_torch_optim.meta import MetaTrainer, ModuleTask
from learned_torch_optim.meta.bptt import SetStep
from learned_torch_optim.meta.tasks import QuadraticTask
from learned_torch_optim.meta.trainer import meta_iteration, network_rule
from learned_torch_optim.weight_set import MAX_NETWORKS, SET_FILE, WeightSetError

RULE = NetworkRule((("0.weight", "conv"),), "fc")


def make_set(seed: int = 0) -> WeightSet:
    torch.manual_seed(seed)
    conv = CoordinatewiseLSTM(hidden_size=8, num_layers=2)
    fc = CoordinatewiseLSTM(hidden_size=5, num_layers=1, preprocessing="adam_normalized", momentum_decays=[0.9])
    return WeightSet({"fc": fc, "conv": conv}, RULE)


def make_model() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        optimizer.zero_grad()
        model(torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(i))).pow(2).mean().backward()
        optimizer.step()


def test_a_saved_set_loads_by_folder_with_its_rule_networks_and_identities(tmp_path):
    weight_set = make_set()
    weight_set.save_pretrained(tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["README.md", "conv", "fc", SET_FILE]
    loaded = load_weight_set(str(tmp_path / "set"))
    assert loaded.rule == RULE and list(loaded.networks) == ["conv", "fc"]
    for name, network in weight_set.networks.items():
        assert loaded.networks[name].config == network.config
        assert all(
            torch.equal(a, b)
            for a, b in zip(loaded.networks[name].state_dict().values(), network.state_dict().values())
        )
        assert loaded.networks[name].weights_identity.source == str((tmp_path / "set").resolve()) + f"/{name}"
    assert load_weight_set(tmp_path / "set").weights_identity == loaded.weights_identity
    assert make_set(seed=1).state_dict().keys() == loaded.state_dict().keys()
    assert load_weight_set(make_set(seed=1)).weights_identity.sha256 != loaded.weights_identity.sha256
    with pytest.raises(WeightsError, match="weight set of 2 networks \\(conv, fc\\).*named_parameters"):
        load_weights(str(tmp_path / "set"))
    CoordinatewiseLSTM().save_pretrained(tmp_path / "one")
    with pytest.raises(WeightsError, match="one network"):
        load_weight_set(tmp_path / "one")


def test_named_parameters_split_into_a_group_per_network_that_runs_as_explicit_groups_would(tmp_path):
    make_set().save_pretrained(tmp_path / "set")
    model, twin = make_model(), make_model()
    optimizer = LearnedOptimizer(model.named_parameters(), weights=str(tmp_path / "set"))
    assert [group["param_names"] for group in optimizer.param_groups] == [
        ["0.weight"],
        ["0.bias", "2.weight", "2.bias"],
    ]
    conv, fc = optimizer.weight_set.networks.values()
    assert optimizer.group_networks == [conv, fc] and optimizer.network is fc
    explicit = LearnedOptimizer(
        [{"params": [twin[0].weight], "weights": conv}, {"params": [twin[0].bias, *twin[2].parameters()]}], weights=fc
    )
    train(model, optimizer, 3)
    train(twin, explicit, 3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    assert optimizer.state[model[0].weight]["lstm_state"].shape[-1] == conv.state_size
    assert optimizer.state[model[2].weight]["lstm_state"].shape[-1] == fc.state_size


def test_plain_parameters_with_a_set_are_refused_naming_the_weights(tmp_path):
    make_set().save_pretrained(tmp_path / "set")
    with pytest.raises(TypeError, match=f"{tmp_path / 'set'}.*conv, fc.*named_parameters\\(\\)"):
        LearnedOptimizer(make_model().parameters(), weights=str(tmp_path / "set"))
    model = make_model()
    optimizer = LearnedOptimizer(model[2].named_parameters(), weights=CoordinatewiseLSTM())
    optimizer.add_param_group({"params": model[0].named_parameters(prefix="0"), "weights": make_set()})  # a group's set
    assert [len(group["params"]) for group in optimizer.param_groups] == [2, 1, 1]


def test_a_set_resumes_bit_exactly_from_its_state_dict(tmp_path):
    make_set().save_pretrained(tmp_path / "set")
    weights = str(tmp_path / "set")
    straight = make_model()
    train(straight, LearnedOptimizer(straight.named_parameters(), weights=weights), 4)
    model = make_model()
    optimizer = LearnedOptimizer(model.named_parameters(), weights=weights)
    train(model, optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert checkpoint["optimizer"]["weights_identity"]["sha256"] == load_weight_set(weights).weights_identity.sha256
    resumed = make_model()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = LearnedOptimizer(resumed.named_parameters(), weights=weights)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_optimizer, 2, start=2)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters()))


def write_set_file(folder, content) -> None:
    make_set().save_pretrained(folder)
    (folder / SET_FILE).write_text(content if isinstance(content, str) else json.dumps(content))


GOOD = {"format": "learned_torch_optim.weight_set", "version": 1, "rules": [["0.weight", "conv"]], "fallback": "fc"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "holds a JSON list"),
        ({**GOOD, "extra": 1}, "unknown key"),
        ({k: v for k, v in GOOD.items() if k != "fallback"}, "lacks \\['fallback'\\]"),
        ({**GOOD, "version": 2}, "version 2"),
        ({**GOOD, "rules": [["a", "b", "c"]]}, "pairs of strings"),
        ({**GOOD, "fallback": "../fc"}, "network name '../fc'"),
        ({**GOOD, "rules": [[f"x{i}", f"n{i}"] for i in range(MAX_NETWORKS)]}, "more than the bound"),
        ({**GOOD, "rules": [["x", "conv"]] * 257}, "257 patterns"),
        ({**GOOD, "rules": [["x" * 1001, "conv"]]}, "at most 1000"),
        ({**GOOD, "rules": [["0.weight", "other"]]}, "other.*missing"),
        (" " * (1 << 20) + "{}", "larger than the bound"),
    ],
)
def test_a_malformed_set_file_is_refused_naming_the_file(tmp_path, content, message):
    write_set_file(tmp_path / "set", content)
    with pytest.raises(WeightsError, match=message) as error:
        LearnedOptimizer(make_model().named_parameters(), weights=str(tmp_path / "set"))
    assert str(tmp_path / "set") in str(error.value)


def test_rule_syntax_named_rules_and_first_match():
    rule = NetworkRule.parse(["conv.*.weight=conv", "x=y=fc", "fc"])  # split at the last '='
    assert rule.patterns == (("conv.*.weight", "conv"), ("x=y", "fc")) and rule.networks == ("conv", "fc")
    names = ("conv.1.weight", "conv.a.b.weight", "conv.1.weight_v", "Conv.1.weight", "x=y", "conv.1.bias")
    assert [rule.network_for(n) for n in names] == ["conv", "conv", "fc", "fc", "fc", "fc"]  # whole name, '*' dots too
    assert network_rule([]) is None and network_rule(["paper-cifar"]).networks == ("conv", "fc")
    for bad, message in (
        (["fc"], "not a named rule"),
        (["a=b", "c=d"], "then the fallback"),
        (["a", "fc"], "not GLOB=NETWORK"),
    ):
        with pytest.raises(ValueError, match=message):
            network_rule(bad)
    with pytest.raises(ValueError, match="network_rule"):
        quick_config(network_rule=["no-such-rule"])
    with pytest.raises(WeightSetError, match="not the networks its rule names"):
        WeightSet({"conv": CoordinatewiseLSTM()}, RULE)


def test_hostile_patterns_match_quickly_and_an_unbalanced_bracket_is_literal(tmp_path):
    # Rules are globs: as regexes these backtrack for ever (re.fullmatch(r"(.*.*)*x", "a" * 22) runs past 20 s).
    hostile = ["*a" * 50 + "x", "(.*.*)*x", "*" * 1000, "[a" * 500, "0.weight"]
    write_set_file(tmp_path / "set", {**GOOD, "rules": [[pattern, "conv"] for pattern in hostile]})
    rule = load_weight_set(tmp_path / "set").rule
    names = ["a" * 5000, "a" * 999 + "b", "(" + "." * 500 + ")" * 500, "0.weight"]
    start = time.perf_counter()
    assert [rule.network_for(name) for name in names] == ["conv", "conv", "conv", "conv"]  # '*' * 1000 matches all
    rule = NetworkRule(tuple((pattern, "conv") for pattern in hostile[:2]), "fc")
    assert [rule.network_for(name) for name in names[:3]] == ["fc", "fc", "fc"]
    assert time.perf_counter() - start < 1.0
    literal = NetworkRule((("conv[0.weight", "conv"),), "fc")  # a '[' without its ']' is a literal '['
    assert [literal.network_for(n) for n in ("conv[0.weight", "conv0.weight")] == ["conv", "fc"]
    assert NetworkRule((("(.*.*)*x", "conv"),), "fc").network_for("(.*.*)*x") == "conv"  # taken literally


def test_a_packaged_set_is_listed_and_checked_file_by_file(tmp_path, monkeypatch):
    make_set().save_pretrained(tmp_path / "l2l-paper-cifar")
    (tmp_path / "l2l-paper-cifar" / "DESCRIPTION").write_text("two networks\n")
    files = [SET_FILE] + [f"{net}/{f}" for net in ("conv", "fc") for f in ("config.json", "model.safetensors")]
    sums = "".join(
        f"{hashlib.sha256((tmp_path / 'l2l-paper-cifar' / f).read_bytes()).hexdigest()}  l2l-paper-cifar/{f}\n"
        for f in files
    )
    (tmp_path / "SHA256SUMS").write_text(sums)
    monkeypatch.setattr(weights_module, "packaged_root", lambda: tmp_path)
    assert list_pretrained() == {"l2l-paper-cifar": "two networks"}
    assert load_weight_set("l2l-paper-cifar").networks["conv"].weights_identity.source == "l2l-paper-cifar/conv"
    conv = load_weights("l2l-paper-cifar/conv")  # one network of a packaged set, for one parameter group
    assert conv.weights_identity.source == "l2l-paper-cifar/conv"
    assert torch.equal(conv.readout.weight, make_set().networks["conv"].readout.weight)
    with pytest.raises(WeightsError, match="'l2l-paper-cifar' has no network 'lstm' \\(it has conv, fc\\)"):
        load_weights("l2l-paper-cifar/lstm")
    damaged = tmp_path / "l2l-paper-cifar" / "fc" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    with pytest.raises(WeightsError, match="fc/model.safetensors does not match its sha256"):
        load_weight_set("l2l-paper-cifar")


def tiny_task() -> ModuleTask:
    """A conv net on random data: named parameters for a two-network rule, a step of milliseconds."""

    def build(generator):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))
            return torch.nn.Sequential(
                torch.nn.Conv1d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(8, 2)
            )

    def batch(generator):
        return torch.randn(8, 1, 6, generator=generator), torch.randint(2, (8,), generator=generator)

    return ModuleTask("tiny", build, torch.nn.functional.cross_entropy, batch)


def test_set_step_runs_each_network_on_its_coordinates_with_forward():
    weight_set = make_set()
    problem = tiny_task().problems([0, 1])  # two problems: their conv weights are two separate segments
    names = [name for name, size in problem.segments() for _ in range(size)]
    step = SetStep(weight_set, problem)
    grad = torch.randn(len(names))
    state = step.initial_state(len(names))
    for _ in range(2):
        update, state = step(grad, state)
    for name, network in weight_set.networks.items():
        mask = torch.tensor([RULE.network_for(n) == name for n in names])
        expected, own = network(grad[mask], network.initial_state(int(mask.sum())))
        expected, _ = network(grad[mask], own)
        torch.testing.assert_close(update[mask], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not name its parameters"):
        SetStep(weight_set, QuadraticTask().problem(0))


def test_a_two_network_run_resumes_exactly_and_writes_a_set_the_optimizer_loads(tmp_path):
    config = quick_config(
        network_rule=["?.weight=w", "rest"], iterations=4, checkpoint_every=1, horizon=6, unroll=3, validate_every=2
    )
    straight = MetaTrainer(config, tmp_path / "straight", task=tiny_task())
    straight.train(progress=False)
    assert list(straight.network.networks) == ["w", "rest"]
    first = MetaTrainer(copy.deepcopy(config), tmp_path / "resumed", task=tiny_task())
    first.config.iterations = 2
    first.train(progress=False)
    resumed = MetaTrainer(config, tmp_path / "resumed", task=tiny_task())
    resumed.train(resume=True, progress=False)
    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    assert straight.best_state.keys() == resumed.best_state.keys()
    assert all(torch.equal(t, resumed.best_state[k]) for k, t in straight.best_state.items())

    loaded = load_weight_set(tmp_path / "resumed")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, resumed.best_state[name]), name
    assert "`?.weight` -> w" in (tmp_path / "resumed" / "README.md").read_text()
    model = tiny_task().problem(0).module
    optimizer = LearnedOptimizer(model.named_parameters(), weights=tmp_path / "resumed")
    assert [group["param_names"] for group in optimizer.param_groups] == [
        ["0.weight", "3.weight"],
        ["0.bias", "3.bias"],
    ]
    with pytest.raises(ValueError, match="network_rule"):  # resuming with another rule is refused
        MetaTrainer(quick_config(iterations=5), tmp_path / "resumed", task=tiny_task()).train(
            resume=True, progress=False
        )


def test_a_network_without_coordinates_in_a_problem_gets_no_meta_gradient():
    weight_set = WeightSet(
        {"w": CoordinatewiseLSTM(hidden_size=4), "unused": CoordinatewiseLSTM(hidden_size=4)},
        NetworkRule(((r"no-such-parameter", "unused"),), "w"),
    )
    before = copy.deepcopy(weight_set.networks["unused"].state_dict())
    meta_optimizer = torch.optim.Adam(weight_set.parameters(), lr=1e-2)
    meta_iteration(weight_set, meta_optimizer, tiny_task().problem(0), horizon=4, unroll_length=2)
    assert all(torch.equal(t, weight_set.networks["unused"].state_dict()[k]) for k, t in before.items())
    assert all(p.grad is not None for p in weight_set.networks["w"].parameters())


SET_RUN = dict(network_rule=["?.weight=w", "rest"], horizon=6, unroll=3, validate_every=2, iterations=4)


def fine_tune_config(start, **overrides):
    """A two-network run on the tiny task that starts from ``start`` (changing none of its network config)."""
    return quick_config(**{**SET_RUN, "init": "default", "network_config": {}, "init_from": str(start), **overrides})


def test_a_set_fine_tunes_each_network_from_its_namesake_and_resumes_exactly(tmp_path):
    MetaTrainer(quick_config(**{**SET_RUN, "iterations": 2}), tmp_path / "first", task=tiny_task()).train(
        progress=False
    )
    start = load_weight_set(tmp_path / "first")
    other_patterns = fine_tune_config(tmp_path / "first", network_rule=["0.weight=w", "rest"])
    tuned = MetaTrainer(other_patterns, tmp_path / "other", task=tiny_task())  # the names matter, not the patterns
    for name, network in start.networks.items():
        for key, tensor in network.state_dict().items():
            assert torch.equal(tensor, tuned.network.networks[name].state_dict()[key]), (name, key)
    assert not torch.equal(start.networks["w"].readout.weight, start.networks["rest"].readout.weight)
    assert tuned.config.network_config == start.networks["w"].config
    assert tuned.init_sha256 == start.weights_identity.sha256

    config = fine_tune_config(tmp_path / "first")
    straight = MetaTrainer(config, tmp_path / "straight", task=tiny_task())
    straight.train(progress=False)
    first = MetaTrainer(fine_tune_config(tmp_path / "first", iterations=2), tmp_path / "resumed", task=tiny_task())
    first.train(progress=False)
    resumed = MetaTrainer(config, tmp_path / "resumed", task=tiny_task())
    resumed.train(resume=True, progress=False)
    assert [row["iteration"] for row in resumed.rows] == [0, 1, 2, 3, 4]  # 0: the start, validated
    for key, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[key]), key
    assert all(torch.equal(t, resumed.best_state[k]) for k, t in straight.best_state.items())
    loaded = load_weight_set(tmp_path / "resumed")
    assert all(torch.equal(t, resumed.best_state[k]) for k, t in loaded.state_dict().items())
    assert f"from weights `{tmp_path / 'first'}`" in (tmp_path / "resumed" / "README.md").read_text()


def test_one_network_starts_every_network_of_a_rule_and_a_set_needs_the_same_names(tmp_path):
    torch.manual_seed(0)
    CoordinatewiseLSTM(preprocessing="identity", hidden_size=5).save_pretrained(tmp_path / "one")
    tuned = MetaTrainer(fine_tune_config(tmp_path / "one"), tmp_path / "run", task=tiny_task())
    one = load_weights(tmp_path / "one")
    for name, network in tuned.network.networks.items():
        assert all(torch.equal(t, network.state_dict()[k]) for k, t in one.state_dict().items()), name
    assert tuned.network.networks["w"] is not tuned.network.networks["rest"]

    make_set().save_pretrained(tmp_path / "set")  # networks conv and fc, of two configs
    with pytest.raises(ValueError, match=r"weight set of networks \['conv', 'fc'\].*no network_rule"):
        MetaTrainer(fine_tune_config(tmp_path / "set", network_rule=[]), tmp_path / "run", task=tiny_task())
    with pytest.raises(ValueError, match=r"\['conv', 'fc'\].*network_rule naming \['w', 'rest'\]"):
        MetaTrainer(fine_tune_config(tmp_path / "set"), tmp_path / "run", task=tiny_task())
    with pytest.raises(ValueError, match="different configs"):
        MetaTrainer(fine_tune_config(tmp_path / "set", network_rule=["0.weight=conv", "fc"]), tmp_path / "run")


def test_a_set_whose_rules_match_no_parameter_name_says_so():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))  # names "0.weight", "0.bias": no rule matches them
    weight_set = WeightSet(make_set().networks, NetworkRule((("conv*", "conv"),), "fc"))
    with pytest.warns(UserWarning, match=r"no parameter name matches its rules \('conv\*' -> conv\).*'fc'"):
        LearnedOptimizer(model.named_parameters(), weights=weight_set)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedOptimizer(make_model().named_parameters(), weights=make_set())
