"""Meta-training throughput: optimizee steps per second on ``mnist-mlp``, ours against the straightforward approach.

The straightforward approach is the one of the public PyTorch re-implementations of Andrychowicz et al. (2016):
a loop over the optimizee's tensors, each through its own ``nn.LSTMCell`` stack, and ``loss.backward(retain_graph=
True)`` every step to get the optimizee gradient (which walks the whole unroll so far: quadratic cost).  Ours is
``learned_torch_optim.meta.trainer.meta_iteration``: one batched network call over all coordinates and
``torch.autograd.grad`` w.r.t. the current parameters only (linear cost).  Both run in the same process, on the same
problems, with the same network shape; the ratio is what the benchmark reports.  MNIST is read from ``--data-dir``
(your data folder) or the download cache.

    python benchmarks/meta_throughput.py [--data-dir DIR] [--iterations 3] [--unroll 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from learned_torch_optim import CoordinatewiseLSTM
from learned_torch_optim.meta.tasks import get_task
from learned_torch_optim.meta.trainer import meta_iteration


class NaiveLSTMOptimizer(nn.Module):
    """Per-tensor loop over a stack of ``nn.LSTMCell`` with log/sign preprocessing, as the public notebooks do."""

    def __init__(self, hidden: int = 20, layers: int = 2) -> None:
        super().__init__()
        self.cells = nn.ModuleList(nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers))
        self.readout = nn.Linear(hidden, 1)
        self.reference = CoordinatewiseLSTM(hidden_size=hidden, num_layers=layers)

    def forward(self, grad: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]]):
        x = self.reference.features(grad)[0]
        new_state = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return 0.1 * self.readout(x).squeeze(-1), new_state


def naive_iteration(net: NaiveLSTMOptimizer, meta_opt: torch.optim.Optimizer, problem, horizon: int, unroll: int):
    module = problem.module
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    names = [n for n, _ in module.named_parameters()]
    states = [[(torch.zeros(p.numel(), 20), torch.zeros(p.numel(), 20)) for _ in net.cells] for p in params]
    for _ in range(horizon // unroll):
        meta_loss = 0.0
        for _ in range(unroll):
            inputs, targets = problem.sample_batch()
            out = torch.func.functional_call(module, dict(zip(names, params, strict=True)), (inputs,))
            loss = nn.functional.cross_entropy(out, targets)
            for p in params:
                p.retain_grad()
            loss.backward(retain_graph=True)
            new_params, new_states = [], []
            for p, s in zip(params, states, strict=True):
                update, s = net(p.grad.detach().reshape(-1), s)
                new_params.append(p + update.view_as(p))
                new_states.append(s)
            params, states = new_params, new_states
            meta_loss = meta_loss + loss
        meta_opt.zero_grad()
        meta_loss.backward()
        meta_opt.step()
        params = [p.detach().requires_grad_(True) for p in params]
        states = [[(h.detach(), c.detach()) for h, c in s] for s in states]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--iterations", type=int, default=3, help="problems per approach (each over the horizon)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--unroll", type=int, default=20)
    args = parser.parse_args()
    task = get_task("mnist-mlp", data_dir=args.data_dir)
    torch.manual_seed(0)
    ours = CoordinatewiseLSTM()
    naive = NaiveLSTMOptimizer()
    ours_opt = torch.optim.Adam(ours.parameters(), lr=1e-3)
    naive_opt = torch.optim.Adam(naive.parameters(), lr=1e-3)
    results = {}
    for label, run in (
        ("ours", lambda p: meta_iteration(ours, ours_opt, p, horizon=args.horizon, unroll_length=args.unroll)),
        ("straightforward", lambda p: naive_iteration(naive, naive_opt, p, args.horizon, args.unroll)),
    ):
        run(task.problem(12345))  # warm-up
        start = time.perf_counter()
        for i in range(args.iterations):
            run(task.problem(i))
        seconds = time.perf_counter() - start
        results[label] = args.iterations * args.horizon / seconds
        print(f"{label:>16}: {results[label]:8.1f} optimizee steps/s  ({seconds:.1f} s)")
    print(f"{'speed-up':>16}: {results['ours'] / results['straightforward']:8.2f}x  (unroll {args.unroll})")


if __name__ == "__main__":
    main()
