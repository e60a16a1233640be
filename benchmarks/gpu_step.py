"""Optimizer step on one GPU at 1e8 parameters against Adam(fused=True) and the roofline (about 2 minutes on an H100).

    python benchmarks/gpu_step.py [--size 1e8] [--repeats 5] [--check-size 1e5] [--weights NAME]

Rows: ``adam-fused`` (``torch.optim.Adam(fused=True)``), ``learned-fused`` (``LearnedOptimizer(implementation=
"fused")``: the Triton kernel where Triton is installed) and ``learned-blocked`` (the same blocks with torch
operations).  Measured in the same run: HBM bandwidth (a copy of 4 GiB, bytes read + written), fp32 GEMM FLOP/s
(8192^3, TF32 off as in the optimizer) and ``torch.sigmoid`` evaluations/s (on 1 GiB).  Per coordinate the paper's
network moves 652 bytes (state read and written, parameter read and written, gradient read), does 9,960 FLOPs and 201
transcendentals (see ``benchmarks/step.py``), so::

    memory bound  = N * 652 B / bandwidth
    compute bound = N * (9960 / GEMM rate + 201 / sigmoid rate)
    bound         = max(memory bound, compute bound)

Peak temporary memory is ``torch.cuda.max_memory_allocated()`` during a step minus the memory allocated before it
(parameters, gradients, state).  ``--weights`` times another network in the paper's network's place (for instance
``l2l-general-v6``, the package's default weights); then no bound is printed (the counts above are the paper's).
Before timing, the fused step is checked against the reference on ``--check-size`` parameters.  Exits with a message
(status 0) where no GPU is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from torch import nn

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_torch_optim.kernels import select_kernel
from learned_torch_optim.kernels.blocked import pack_network
from learned_torch_optim.weights import load_weights


def gpu_time(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` runs after one warm-up, timed with CUDA events."""
    function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a copy of 4 GiB."""
    source = torch.empty(1 << 30, device="cuda")
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / gpu_time(lambda: target.copy_(source), 5)


def machine_rates() -> dict[str, float]:
    bandwidth = copy_bandwidth()
    n = 8192
    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    gemm = 2 * n**3 / gpu_time(lambda: a @ b, 5)
    x = torch.randn(10**9 // 4, device="cuda")
    y = torch.empty_like(x)
    sigmoid = x.numel() / gpu_time(lambda: torch.sigmoid(x, out=y), 5)
    return {"bandwidth": bandwidth, "gemm": gemm, "sigmoid": sigmoid}


def make_params(size: int) -> list[nn.Parameter]:
    """Four big square weight matrices and their biases, about ``size`` parameters, gradients set."""
    width = max(1, round((size / 4) ** 0.5))
    params = []
    for _ in range(4):
        for shape in ((width, width), (width,)):
            param = nn.Parameter(torch.randn(shape, device="cuda") * 0.1)
            param.grad = torch.randn(shape, device="cuda") * 1e-3
            params.append(param)
    return params


def check_against_reference(network: CoordinatewiseLSTM, size: int) -> float:
    """Largest difference between the fused and the reference step over three steps."""
    results = []
    for implementation in ("reference", "fused"):
        torch.manual_seed(0)
        params = make_params(size)
        optimizer = LearnedOptimizer(params, weights=network, implementation=implementation)
        for _ in range(3):
            optimizer.step()
        results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return float((results[0] - results[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=1e8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check-size", type=float, default=1e5)
    parser.add_argument("--weights", default=None, help="weights to time (default: the paper's network, untrained)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA GPU here; nothing to measure.")
        sys.exit(0)
    network = (CoordinatewiseLSTM() if args.weights is None else load_weights(args.weights)).cuda()
    path, _ = select_kernel(pack_network(network, torch.device("cuda")), torch.device("cuda"), True)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"network: {args.weights or 'the paper form'}; fused path: {path}")
    print(f"fused vs reference, {int(args.check_size)} parameters, 3 steps: max |diff| = "
          f"{check_against_reference(network, int(args.check_size)):.2e}")  # fmt: skip
    rates = machine_rates()
    print(
        f"rates: copy {rates['bandwidth'] / 1e12:.2f} TB/s, fp32 GEMM {rates['gemm'] / 1e12:.1f} TFLOP/s, "
        f"sigmoid {rates['sigmoid'] / 1e9:.0f} G/s"
    )
    params = make_params(int(args.size))
    n = sum(p.numel() for p in params)
    memory_bound = n * 652 / rates["bandwidth"]
    compute_bound = n * (9960 / rates["gemm"] + 201 / rates["sigmoid"])
    bound = max(memory_bound, compute_bound)
    bounds = f"; memory bound {memory_bound * 1e3:.1f} ms, compute bound {compute_bound * 1e3:.1f} ms"
    print(f"{n} parameters{bounds if args.weights is None else ''}")
    print(f"{'optimizer':>16} {'step ms':>10} {'x bound':>8} {'x Adam':>8} {'peak temp MB':>13} {'state GB':>9}")
    rows = {}
    for label in ("adam-fused", "learned-fused", "learned-blocked"):
        if label == "adam-fused":
            optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        else:
            optimizer = LearnedOptimizer(params, weights=network, implementation=label.split("-")[1])
        optimizer.step()  # creates the state
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = gpu_time(optimizer.step, args.repeats)
        peak = torch.cuda.max_memory_allocated() - before
        state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
        rows[label] = seconds
        ratio = f"{seconds / bound:.2f}" if label != "adam-fused" and args.weights is None else "-"
        print(
            f"{label:>16} {seconds * 1e3:>10.2f} {ratio:>8} {seconds / rows['adam-fused']:>8.1f} "
            f"{peak / 2**20:>13.1f} {state / 1e9:>9.2f}"
        )
        del optimizer
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
