"""LearnedOptimizer under DDP, FSDP2 (+ DCP) and ZeroRedundancyOptimizer: 2 CPU processes with gloo."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer

WORKER = Path(__file__).with_name("distributed_worker.py")

pytestmark = [
    pytest.mark.slow,  # two-process runs: `python -m pytest -q -m slow`
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built"),
]


# Rank 0 once aborted with this C++ runtime message (a std::thread destroyed while joinable, inside torch) in a
# clean-clone CI run; the same launch passed on 8 reruns. That crash alone, and nothing else, earns one retry.
THREAD_TEARDOWN_ABORT = "terminate called without an active exception"


def run_once_more_on_teardown_abort(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for _ in range(2):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or THREAD_TEARDOWN_ABORT not in result.stdout + result.stderr:
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def launch(mode: str, weights: Path, out: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_once_more_on_teardown_abort([*command, str(WORKER), mode, str(weights), str(out)])


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(42)
    CoordinatewiseLSTM().save_pretrained(root / "weights")
    launch("train", root / "weights", root)
    launch("restore", root / "weights", root)
    return root


def single_process_params(weights: Path) -> dict[str, torch.Tensor]:
    from distributed_worker import STEPS, global_batch, make_model  # needs torch.distributed: imported here

    model = make_model()
    optimizer = LearnedOptimizer(model.parameters(), weights=weights)
    for step in range(STEPS):
        inputs, targets = global_batch(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("run", ["ddp", "fsdp", "zero", "restored"])
def test_two_processes_reproduce_the_single_process_trajectory(distributed_run, run):
    expected = single_process_params(distributed_run / "weights")
    got = load_file(str(distributed_run / f"{run}.safetensors"))
    for name, tensor in expected.items():
        assert (got[name] - tensor).abs().max() < 1e-5, name


def test_fsdp_shards_the_lstm_state(distributed_run):
    fraction = json.loads((distributed_run / "train-rank0.json").read_text())["fsdp_state_fraction"]
    assert 0.3 < fraction < 0.7


def meta_train(arguments: list[str], out: Path, processes: int) -> Path:
    """``learned_torch_optim.meta train`` into ``out``: under torchrun with ``processes`` > 1, else plainly."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    run_once_more_on_teardown_abort(
        [*launcher, "-m", "learned_torch_optim.meta", *arguments, "--no-progress", "--out", str(out)]
    )
    return out


def test_torchrun_meta_training_equals_single_process_of_the_same_budget(tmp_path):
    common = "train --task quadratic --iterations 3 --horizon 20 --unroll 10 --validation-problems 2 --validate-every 3"
    common += " --hidden-size 8 --preprocessing identity --output-scale 1.0"
    two = meta_train([*common.split(), "--meta-batch-size", "1"], tmp_path / "two", processes=2)
    one = meta_train([*common.split(), "--meta-batch-size", "2"], tmp_path / "one", processes=1)
    distributed = torch.load(two / "checkpoint.pt", weights_only=True)["network"]
    single = torch.load(one / "checkpoint.pt", weights_only=True)["network"]
    for name, tensor in single.items():
        torch.testing.assert_close(distributed[name], tensor, rtol=1e-4, atol=1e-5)
    LearnedOptimizer([torch.nn.Parameter(torch.ones(3))], weights=two)


def test_torchrun_evolution_strategies_rescale_problems_and_share_validation_out(tmp_path):
    torch.manual_seed(0)
    CoordinatewiseLSTM(hidden_size=8, output_scale=0.01).save_pretrained(tmp_path / "start")
    arguments = f"train --task quadratic,quadratic-ill --init-from {tmp_path / 'start'} --meta-gradient es"
    arguments += " --es-pairs 1 --es-sigma 0.1 --meta-lr 0.01 --param-scale 3 --iterations 2 --horizon 20"
    arguments += " --validation-problems 3 --validation-per-family --validation-metric final --validate-every 1"
    two = meta_train(arguments.split(), tmp_path / "two", processes=2)
    one = meta_train(arguments.split(), tmp_path / "one", processes=1)
    rows = {run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)}
    assert rows[two][0]["validation_loss"] == pytest.approx(rows[one][0]["validation_loss"], rel=1e-6)
    assert all(math.isfinite(row["validation_loss"]) for row in rows[two])
    assert json.loads((two / "config.json").read_text())["hidden_size"] == 8
