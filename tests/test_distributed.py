"""LearnedOptimizer under DDP, FSDP2 (+ DCP) and ZeroRedundancyOptimizer: 2 CPU processes with gloo."""

import json
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


def launch(mode: str, weights: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for _ in range(2):
        result = subprocess.run(
            [*command, str(WORKER), mode, str(weights), str(out)], env=env, capture_output=True, text=True, timeout=300
        )
        if result.returncode == 0 or THREAD_TEARDOWN_ABORT not in result.stdout + result.stderr:
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


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


def test_torchrun_meta_training_equals_single_process_of_the_same_budget(tmp_path):
    common = [
        "train",
        "--task",
        "quadratic",
        "--iterations",
        "3",
        "--horizon",
        "20",
        "--unroll",
        "10",
        "--validation-problems",
        "2",
        "--validate-every",
        "3",
        "--hidden-size",
        "8",
        "--preprocessing",
        "identity",
        "--output-scale",
        "1.0",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [
            *torchrun,
            "-m",
            "learned_torch_optim.meta",
            *common,
            "--meta-batch-size",
            "1",
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "learned_torch_optim.meta",
            *common,
            "--meta-batch-size",
            "2",
            "--out",
            str(tmp_path / "one"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    distributed = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["network"]
    single = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["network"]
    for name, tensor in single.items():
        torch.testing.assert_close(distributed[name], tensor, rtol=1e-4, atol=1e-5)
    LearnedOptimizer([torch.nn.Parameter(torch.ones(3))], weights=tmp_path / "two")
