"""The fast step implementations (learned_torch_optim.kernels) against the reference definition of the rule
(``CoordinatewiseLSTM.forward``), for every network option."""

import io
import math
import os

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_torch_optim.kernels import BLOCK_SIZES, native, workspace_bytes
from learned_torch_optim.kernels.blocked import (
    Workspace,
    blocked_step,
    lstm_block,
    pack_network,
    plan_blocks,
    random_state,
)
from learned_torch_optim.optimizer import learned_step

CPU = torch.device("cpu")
PAPER = dict(hidden_size=20, num_layers=2, preprocessing="log_sign")
DEFAULT_FORM = dict(  # the options of the generalists (l2l-general, -v2), smaller
    hidden_size=6,
    num_layers=1,
    preprocessing="adam_normalized",
    output_scale=1e-3,
    momentum_decays=[0.5, 0.9, 0.99],
    step_timescales=[10.0, 100.0],
    readout_skip=True,
    output="direction_magnitude",
    update_clip=0.05,
    gradient_rms_clip=5.0,
)
SHIPPED_FORM = dict(DEFAULT_FORM, lr_decay_input=True, lr_warmup_input=True, linear_direction=True)  # l2l-general-v6's
CONFIGS = [
    PAPER,
    dict(hidden_size=7, num_layers=1, preprocessing="identity", output_scale=1.0),
    dict(hidden_size=5, num_layers=3, preprocessing="log_sign", preprocessing_p=5.0),
    dict(hidden_size=4, num_layers=0, preprocessing="log_sign"),
    DEFAULT_FORM,
    dict(DEFAULT_FORM, hidden_size=20, num_layers=2, update_clip=None, gradient_rms_clip=None, magnitude_scale=0.3),
    dict(hidden_size=5, num_layers=2, preprocessing="log_sign", momentum_decays=[0.9], step_timescales=[30.0]),
    dict(hidden_size=3, num_layers=1, preprocessing="identity", momentum_decays=[0.7], update_clip=0.2),
    dict(hidden_size=4, num_layers=1, preprocessing="adam_normalized", second_moment_decay=0.9),
    dict(hidden_size=4, num_layers=1, preprocessing="log_sign", step_timescales=[5.0], readout_skip=True),
    dict(DEFAULT_FORM, num_layers=0),
    dict(DEFAULT_FORM, lr_decay_input=True),
    dict(hidden_size=4, num_layers=2, preprocessing="log_sign", lr_decay_input=True),
    dict(hidden_size=4, num_layers=0, preprocessing="identity", lr_decay_input=True),
    dict(DEFAULT_FORM, lr_decay_input=True, linear_direction=True),
    dict(DEFAULT_FORM, num_layers=0, linear_direction=True),
    dict(DEFAULT_FORM, lr_warmup_input=True),
    SHIPPED_FORM,
    dict(hidden_size=4, num_layers=0, preprocessing="identity", lr_decay_input=True, lr_warmup_input=True),
]
LR_STATE = torch.tensor([0.37, 0.81])
"""``(delta_t, rho_t)`` of the block tests (networks without lr inputs ignore them)."""
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def config_id(config: dict) -> str:
    options = [f"L{config['num_layers']}", config["preprocessing"]]
    options += [name for name in ("momentum_decays", "step_timescales", "readout_skip") if config.get(name)]
    extras = ("output", "update_clip", "gradient_rms_clip", "lr_decay_input", "lr_warmup_input", "linear_direction")
    options += [name for name in extras if config.get(name)]
    return "-".join(options)


def make_network(config: dict, seed: int = 0) -> CoordinatewiseLSTM:
    torch.manual_seed(seed)
    network = CoordinatewiseLSTM(**config)
    with torch.no_grad():  # weights larger than at initialisation, so that gates saturate and states grow
        for p in network.parameters():
            p.mul_(3.0)
    return network


def random_inputs(network: CoordinatewiseLSTM, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients over many magnitudes (both preprocessing branches, zeros) and random states a run could reach
    (mixed step counts, second moments above the squared momenta, never-stepped coordinates)."""
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, generator=generator) * torch.logspace(-9, 2, n)[torch.randperm(n, generator=generator)]
    grad[::11] = 0.0
    state = random_state(network, n, generator)
    state[:, : network.lstm_state_size].mul_(2)
    return grad, state


def states_for(network: CoordinatewiseLSTM, shapes: list[tuple[int, ...]], seed: int = 5) -> list[torch.Tensor]:
    """Random reachable states (:func:`random_state`) for parameters of ``shapes``."""
    generator = torch.Generator().manual_seed(seed)
    return [random_state(network, math.prod(shape), generator).reshape(*shape, -1) for shape in shapes]


TWO_FORMS = pytest.mark.parametrize("config", [PAPER, DEFAULT_FORM], ids=["paper", "default"])


def native_kernel(packed):
    kernel = native.load(packed)
    if kernel is None:
        pytest.skip(f"no compiled kernel here: {native.last_failure}")
    return kernel


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("use_native", [False, True], ids=["torch", "native"])
def test_block_math_equals_the_network(config, use_native):
    network = make_network(config)
    packed = pack_network(network, CPU, LR_STATE)
    n = 333
    grad, state = random_inputs(network, n)
    with torch.no_grad():
        expected_update, expected_state = network(grad, state, LR_STATE)
    new_state = state.clone()
    if use_native:
        if not network.num_layers:
            assert native.load(packed) is None  # nothing to compile: the torch path does the linear map
            return
        kernel = native_kernel(packed)
        update = torch.empty(n)
        kernel(packed, kernel.pack(packed), grad, new_state, update)
    else:
        update = lstm_block(packed, grad, new_state, Workspace(packed, n, CPU))
    torch.testing.assert_close(update, expected_update, **TOLERANCE)
    torch.testing.assert_close(new_state, expected_state, **TOLERANCE)


@TWO_FORMS
def test_native_kernel_splits_rows_across_threads(config):
    network = make_network(config)
    packed = pack_network(network, CPU)
    kernel = native_kernel(packed)
    grad, state = random_inputs(network, 5000)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            new_state, update = state.clone(), torch.empty(5000)
            kernel(packed, kernel.pack(packed), grad, new_state, update)
            results.append((update, new_state))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_plan_blocks_covers_every_coordinate_once_within_the_block_size():
    numels = [5, 0, 130, 64, 1, 63, 200]
    blocks = plan_blocks(numels, 64)
    assert all(sum(stop - start for _, start, stop in block) <= 64 for block in blocks)
    seen = {(k, i) for block in blocks for k, start, stop in block for i in range(start, stop)}
    assert len(seen) == sum(numels) == sum(stop - start for block in blocks for _, start, stop in block)
    assert [(1, 0, 64)] not in blocks and [(2, 0, 64)] in blocks and [(3, 0, 64)] in blocks  # whole blocks alone


def step_both_ways(network, params, grads, states, *, kernel, block_size=64, state_dtype=torch.float32, **options):
    """One step by learned_step and by blocked_step on copies; returns both results."""
    results = []
    for fused in (False, True):
        p = [x.clone() for x in params]
        s = [x.to(state_dtype, copy=True) for x in states]
        with torch.no_grad():
            if fused:
                packed = pack_network(network, CPU)
                finite = blocked_step(p, grads, s, packed, block_size=block_size, kernel=kernel, **options)
            else:
                finite = learned_step(p, grads, s, network=network, **options)
        results.append((finite, p, s))
    return results


@TWO_FORMS
@pytest.mark.parametrize("use_native", [False, True], ids=["torch", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_blocked_step_equals_learned_step(use_native, dtype, config):
    network = make_network(config)
    kernel = native_kernel(pack_network(network, CPU)) if use_native else None
    torch.manual_seed(2)
    shapes = [(3, 50), (7,), (64,), (130,), ()]
    params = [torch.randn(shape).to(dtype) for shape in shapes]
    params[0] = params[0].t()  # a non-contiguous parameter
    grads = [torch.randn(p.shape).to(dtype) * 0.01 for p in params]
    states = states_for(network, shapes)
    for options in (
        dict(lr=1.0, weight_decay=0.0, maximize=False),
        dict(lr=0.3, weight_decay=0.1, maximize=True),
        dict(lr=torch.tensor(0.5), weight_decay=0.0, maximize=False),
    ):
        (finite_ref, p_ref, s_ref), (finite, p, s) = step_both_ways(
            network, params, grads, states, kernel=kernel, **options
        )
        assert finite and finite_ref
        tolerance = TOLERANCE if dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-2)
        for a, b in zip(p + s, p_ref + s_ref):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, **tolerance)


@TWO_FORMS
@pytest.mark.parametrize("use_native", [False, True], ids=["torch", "native"])
def test_non_finite_coordinates_keep_parameter_and_state(use_native, config):
    network = make_network(config)
    kernel = native_kernel(pack_network(network, CPU)) if use_native else None
    torch.manual_seed(3)
    params = [torch.randn(100), torch.randn(9)]
    grads = [torch.randn(100), torch.randn(9)]
    grads[0][[3, 70, 71]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    states = states_for(network, [(100,), (9,)])
    options = dict(lr=0.5, weight_decay=0.1, maximize=False)
    (finite_ref, p_ref, s_ref), (finite, p, s) = step_both_ways(
        network, params, grads, states, kernel=kernel, **options
    )
    assert not finite and not finite_ref
    for a, b in zip(p + s, p_ref + s_ref):
        torch.testing.assert_close(a, b, **TOLERANCE)
    assert torch.equal(p[0][[3, 70, 71]], params[0][[3, 70, 71]])
    assert torch.equal(s[0][[3, 70, 71]], states[0][[3, 70, 71]])


@TWO_FORMS
@pytest.mark.parametrize("use_native", [False, True], ids=["torch", "native"])
def test_zero_lr_is_an_exact_no_op_on_parameters(use_native, config):
    network = make_network(config)
    kernel = native_kernel(pack_network(network, CPU)) if use_native else None
    params, grads = [torch.randn(300)], [torch.randn(300)]
    states = states_for(network, [(300,)])
    (_, _, s_ref), (_, p, s) = step_both_ways(
        network, params, grads, states, kernel=kernel, lr=0.0, weight_decay=0.5, maximize=False
    )
    assert torch.equal(p[0], params[0])
    torch.testing.assert_close(s[0], s_ref[0], **TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_blocked_step_of_every_network_shape(config):
    network = make_network(config)
    packed = pack_network(network, CPU)
    params, grads = [torch.randn(200), torch.randn(30)], [torch.randn(200), torch.randn(30)]
    states = states_for(network, [(200,), (30,)])
    (_, p_ref, s_ref), (_, p, s) = step_both_ways(
        network, params, grads, states, kernel=native.load(packed), lr=1.0, weight_decay=0.0, maximize=False
    )
    for a, b in zip(p + s, p_ref + s_ref):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_bf16_state_is_stored_rounded_and_computed_in_fp32():
    network = make_network(PAPER)
    params, grads = [torch.randn(150)], [torch.randn(150) * 0.01]
    states = [torch.randn(150, network.state_size)]
    for kernel in (None, native.load(pack_network(network, CPU))):
        (_, p_ref, s_ref), (_, p, s) = step_both_ways(
            network, params, grads, states, kernel=kernel, state_dtype=torch.bfloat16, lr=1.0, weight_decay=0.0,
            maximize=False,
        )  # fmt: skip
        assert s[0].dtype == torch.bfloat16
        torch.testing.assert_close(p[0], p_ref[0], **TOLERANCE)
        torch.testing.assert_close(s[0].float(), s_ref[0].float(), rtol=1e-2, atol=1e-2)


def test_workspace_is_bounded_by_the_block_size():
    network = CoordinatewiseLSTM()
    packed = pack_network(network, CPU)
    assert Workspace(packed, 10, CPU).G.shape == (10, 80)
    assert Workspace.bytes_per_row(packed, for_torch_math=False) == 4 * (80 + 5) + 2
    assert workspace_bytes(network, "native") == BLOCK_SIZES["native"] * (4 * 85 + 2)
    assert workspace_bytes(network, "torch-cpu") == BLOCK_SIZES["torch-cpu"] * (4 * (40 + 80 + 80 + 5) + 2)


@pytest.fixture
def fresh_kernel_cache(monkeypatch, tmp_path):
    """An empty kernel cache folder, and nothing loaded or failed in this process."""
    monkeypatch.setenv("LEARNED_TORCH_OPTIM_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_kernels", {})
    monkeypatch.setattr(native, "_failed", set())
    return tmp_path / "kernels"


def test_missing_compiler_falls_back_silently(monkeypatch, tmp_path, fresh_kernel_cache):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    network = CoordinatewiseLSTM(hidden_size=3)
    assert native.load(pack_network(network, CPU)) is None and "compiler" in native.last_failure
    param = torch.nn.Parameter(torch.randn(5))
    param.grad = torch.randn(5)
    LearnedOptimizer([param], weights=network, implementation="fused").step()
    assert torch.isfinite(param).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_cached_library_is_built_afresh(monkeypatch, fresh_kernel_cache, damage):
    packed = pack_network(CoordinatewiseLSTM(hidden_size=3, num_layers=1), CPU)
    native_kernel(packed)
    (library,) = fresh_kernel_cache.glob("*.so")
    good = library.read_bytes()
    library.write_bytes(b"not a library" * 100 if damage == "garbage" else good[: len(good) // 2])
    monkeypatch.setattr(native, "_kernels", {})  # a new process: the cached file is all there is
    assert native.load(packed) is not None, native.last_failure
    assert library.read_bytes() != good[: len(good) // 2] and library.stat().st_size > 1000


def test_a_cache_folder_others_can_write_is_not_loaded_from(monkeypatch, fresh_kernel_cache):
    packed = pack_network(CoordinatewiseLSTM(hidden_size=3, num_layers=1), CPU)
    fresh_kernel_cache.mkdir(parents=True)
    fresh_kernel_cache.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="can be written by other users"):
        assert native.load(packed) is None
    assert str(fresh_kernel_cache) in native.last_failure and not list(fresh_kernel_cache.glob("*.so"))


def test_a_cache_folder_of_another_user_is_not_loaded_from(monkeypatch, fresh_kernel_cache):
    packed = pack_network(CoordinatewiseLSTM(hidden_size=3, num_layers=1), CPU)
    monkeypatch.setattr(native.os, "getuid", lambda: 4242)
    with pytest.warns(RuntimeWarning, match="not to this user"):
        assert native.load(packed) is None


def make_model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 2)).to(dtype)


def train(model, optimizer, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        generator = torch.Generator().manual_seed(i)
        dtype = next(model.parameters()).dtype
        optimizer.zero_grad()
        model(torch.randn(16, 40, generator=generator, dtype=dtype)).pow(2).mean().backward()
        optimizer.step()


@TWO_FORMS
def test_implementations_agree_over_several_steps(config):
    network = make_network(config)
    finals = {}
    for implementation in ("reference", "blocked", "fused", "auto"):
        model = make_model()
        complex_param = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
        optimizer = LearnedOptimizer(
            [*model.parameters(), complex_param], weights=network, implementation=implementation
        )
        for i in range(4):
            optimizer.zero_grad()
            generator = torch.Generator().manual_seed(i)
            loss = model(torch.randn(16, 40, generator=generator)).pow(2).mean() + complex_param.abs().pow(2).sum()
            loss.backward()
            optimizer.step()
        finals[implementation] = [p.detach().clone() for p in [*model.parameters(), complex_param]]
    for implementation in ("blocked", "fused", "auto"):
        for a, b in zip(finals[implementation], finals["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "first, second", [("fused", "reference"), ("reference", "blocked"), ("blocked", "fused")], ids="-then-".join
)
def test_a_checkpoint_of_one_implementation_resumes_on_another(first, second):
    network = make_network(DEFAULT_FORM)
    straight_model = make_model()
    straight = LearnedOptimizer(straight_model.parameters(), weights=network, implementation="reference")
    train(straight_model, straight, 6)

    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=network, implementation=first)
    train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = make_model()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = LearnedOptimizer(resumed.parameters(), weights=network, implementation=second)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_optimizer, 3, start=3)
    for a, b in zip(resumed.parameters(), straight_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_implementation_or_state_dtype_is_refused(network):
    param = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="implementation"):
        LearnedOptimizer([param], weights=network, implementation="triton")
    with pytest.raises(ValueError, match="state_dtype"):
        LearnedOptimizer([param], weights=network, state_dtype=torch.int8)


@pytest.mark.parametrize("implementation", ["reference", "fused"])
def test_bf16_state_halves_the_memory_and_stays_close(network, implementation):
    model, reference = make_model(), make_model()
    optimizer = LearnedOptimizer(
        model.parameters(), weights=network, state_dtype=torch.bfloat16, implementation=implementation
    )
    ref_optimizer = LearnedOptimizer(reference.parameters(), weights=network)
    train(model, optimizer, 5)
    train(reference, ref_optimizer, 5)
    for p, q in zip(model.parameters(), reference.parameters()):
        state, ref_state = optimizer.state[p]["lstm_state"], ref_optimizer.state[q]["lstm_state"]
        assert state.dtype == torch.bfloat16 and ref_state.dtype == torch.float32
        assert state.nbytes * 2 == ref_state.nbytes
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float16])
def test_bf16_state_resumes_bit_exactly_in_its_dtype(network, param_dtype):
    model = make_model(param_dtype)
    optimizer = LearnedOptimizer(model.parameters(), weights=network, state_dtype=torch.bfloat16)
    train(model, optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, 2, start=2)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = make_model(param_dtype)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = LearnedOptimizer(resumed.parameters(), weights=network, state_dtype=torch.bfloat16)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert all(resumed_optimizer.state[p]["lstm_state"].dtype == torch.bfloat16 for p in resumed.parameters())
    train(resumed, resumed_optimizer, 2, start=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", [PAPER, DEFAULT_FORM, SHIPPED_FORM], ids=["paper", "default", "shipped"])
@pytest.mark.parametrize("implementation", ["fused", "blocked"])
def test_cuda_step_equals_the_reference(implementation, config):
    network = make_network(config)
    finals = []
    for chosen in ("reference", implementation):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, device="cuda")) for shape in ((300, 70), (70,), (5,))]
        optimizer = LearnedOptimizer(params, weights=network, implementation=chosen)
        for lr in (1.0, 2.0, 0.5):  # a warm-up, then a decay: the lr inputs of the shipped form are not 0
            optimizer.param_groups[0]["lr"] = lr * network.nominal_lr
            for p in params:
                p.grad = torch.randn_like(p) * 0.01
            optimizer.step()
        finals.append(params)
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "implementation, device, compiled",
    [("fused", "cpu", True), ("auto", "cpu", True), ("blocked", "cpu", False), ("fused", "cuda", True)]
    + [("auto", "cuda", False), ("blocked", "cuda", False)],
)
def test_which_implementations_may_use_a_compiled_kernel(monkeypatch, implementation, device, compiled):
    import learned_torch_optim.optimizer as optimizer_module

    chosen = optimizer_module.choose_implementation(implementation, torch.device(device), CoordinatewiseLSTM())
    assert chosen == ("compiled" if compiled else "blocked")
    if device != "cpu":
        return
    seen = []

    def recording_step_in_blocks(params, grads, states, network, *, compiled, **options):
        seen.append(compiled)
        return True

    monkeypatch.setattr(optimizer_module, "step_in_blocks", recording_step_in_blocks)
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4)
    LearnedOptimizer([param], weights=CoordinatewiseLSTM(hidden_size=4), implementation=implementation).step()
    assert seen == [compiled]


def test_the_reference_is_chosen_by_name_only():
    from learned_torch_optim.optimizer import choose_implementation

    network = CoordinatewiseLSTM()
    assert {choose_implementation("reference", torch.device(d), network) for d in ("cpu", "cuda")} == {"reference"}


def test_an_option_the_kernels_do_not_compute_runs_the_reference(monkeypatch):
    import learned_torch_optim.kernels as kernels
    import learned_torch_optim.optimizer as optimizer_module

    clipped = CoordinatewiseLSTM(**DEFAULT_FORM)
    assert kernels.implements(clipped) and set(clipped.config) <= kernels.IMPLEMENTED_OPTIONS
    monkeypatch.setattr(kernels, "IMPLEMENTED_OPTIONS", kernels.IMPLEMENTED_OPTIONS - {"update_clip"})
    assert not kernels.implements(clipped) and kernels.implements(CoordinatewiseLSTM())
    for device in ("cpu", "cuda"):
        assert optimizer_module.choose_implementation("auto", torch.device(device), clipped) == "reference"
    for implementation in ("fused", "blocked"):
        with pytest.raises(ValueError, match="does not compute every option"):
            LearnedOptimizer([torch.nn.Parameter(torch.ones(2))], weights=clipped, implementation=implementation)


def test_strided_parameters_and_states_are_stepped_where_they_are(fresh_kernel_cache):
    """A parameter that is a strided view (every other element of a tensor, a column) and LSTM state loaded in
    column-major order: the one-pass kernel must not read or write them as dense."""
    network = make_network(DEFAULT_FORM)
    n = BLOCK_SIZES["native"] + 5
    results = {}
    for implementation in ("reference", "fused"):
        torch.manual_seed(4)
        base, matrix = torch.randn(2 * n), torch.randn(n, 4)
        params = [torch.nn.Parameter(base[::2]), torch.nn.Parameter(matrix[:, :1])]
        optimizer = LearnedOptimizer(params, weights=network, implementation=implementation)
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) * 0.01
            optimizer.step()
            if step == 0:  # resume from the same state laid out column by column
                state_dict = optimizer.state_dict()
                for entry in state_dict["state"].values():
                    flat = entry["lstm_state"].reshape(-1, network.state_size)
                    entry["lstm_state"] = flat.t().contiguous().t().view_as(entry["lstm_state"])
                optimizer.load_state_dict(state_dict)
        results[implementation] = (base.clone(), matrix.clone())
    for fused, reference in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(fused, reference, **TOLERANCE)


def test_a_build_under_a_group_writable_umask_is_loaded(fresh_kernel_cache):
    previous = os.umask(0o002)
    try:
        assert native.load(pack_network(CoordinatewiseLSTM(hidden_size=3, num_layers=1), CPU)) is not None
    finally:
        os.umask(previous)
    (library,) = fresh_kernel_cache.glob("*.so")
    assert not library.stat().st_mode & 0o022


def test_a_cached_library_replaced_by_a_link_is_not_loaded_through_it(monkeypatch, fresh_kernel_cache, tmp_path):
    packed = pack_network(CoordinatewiseLSTM(hidden_size=3, num_layers=1), CPU)
    native_kernel(packed)
    (library,) = fresh_kernel_cache.glob("*.so")
    elsewhere = tmp_path / "elsewhere.so"
    library.rename(elsewhere)
    library.symlink_to(elsewhere)  # same bytes, same recorded sha256: only the link betrays it
    monkeypatch.setattr(native, "_kernels", {})
    assert native.load(packed) is not None, native.last_failure
    assert not library.is_symlink()  # built afresh in its place
