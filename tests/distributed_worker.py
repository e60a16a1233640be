"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py MODE WEIGHTS OUT

MODE ``train``: DDP, FSDP2 (with a DCP checkpoint half-way) and ZeroRedundancyOptimizer runs of the same problem on
the same global batches; MODE ``restore``: a fresh job restores the DCP checkpoint and finishes the FSDP2 run.
Results go to OUT as safetensors and JSON for the test to compare with a single-process run.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from learned_torch_optim import LearnedOptimizer

STEPS = 6


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)


def train_steps(model, optimizer, steps: range) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in steps:
        inputs, targets = global_batch(step)
        rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs[rows]), targets[rows]).backward()
        optimizer.step()


def full_params(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone().contiguous()
        for name, p in model.named_parameters()
    }


def sharded_model() -> torch.nn.Module:
    model = make_model()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def main() -> None:
    mode, weights, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report: dict = {}
    if mode == "train":
        ddp = DistributedDataParallel(make_model())
        train_steps(ddp, LearnedOptimizer(ddp.parameters(), weights=weights), range(STEPS))
        ddp_params = full_params(ddp.module)

        model = sharded_model()
        optimizer = LearnedOptimizer(model.parameters(), weights=weights)
        train_steps(model, optimizer, range(STEPS // 2))
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out / "dcp"))
        train_steps(model, optimizer, range(STEPS // 2, STEPS))
        fsdp_params = full_params(model)
        local = sum(s["lstm_state"].to_local().numel() for s in optimizer.state.values())
        total = sum(s["lstm_state"].numel() for s in optimizer.state.values())
        report["fsdp_state_fraction"] = local / total

        zero_model = make_model()
        zero = ZeroRedundancyOptimizer(zero_model.parameters(), optimizer_class=LearnedOptimizer, weights=weights)
        ddp_zero = DistributedDataParallel(zero_model)
        train_steps(ddp_zero, zero, range(STEPS))
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            report["zero_state_entries"] = len(zero.state_dict()["state"])
        if rank == 0:
            save_file(ddp_params, str(out / "ddp.safetensors"))
            save_file(fsdp_params, str(out / "fsdp.safetensors"))
            save_file(full_params(zero_model), str(out / "zero.safetensors"))
    else:
        model = sharded_model()
        optimizer = LearnedOptimizer(model.parameters(), weights=weights)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(out / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        train_steps(model, optimizer, range(STEPS // 2, STEPS))
        restored = full_params(model)
        if rank == 0:
            save_file(restored, str(out / "restored.safetensors"))
    report[f"rank{rank}"] = "ok"
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
