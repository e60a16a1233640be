"""Optimizer step time and peak temporary memory against the roofline, on the CPU.

    python benchmarks/step.py [--sizes 1e4 1e5 1e6 1e7] [--repeats 5] [--threads N] [--implementations ...]

For each model size (parameters of a 4-layer square MLP, weights and biases: a few big tensors and a few small
ones) it measures one ``optimizer.step()`` of:

- ``fused``: ``LearnedOptimizer(implementation="fused")`` (blocked, compiled kernel);
- ``blocked``: ``LearnedOptimizer(implementation="blocked")`` (blocked, torch operations, the fallback);
- ``reference``: ``LearnedOptimizer(implementation="reference")`` (one batched call of the network);
- ``straightforward``: what the public re-implementations do: a loop over tensors, each through two stacked
  ``nn.LSTMCell`` and a ``Linear`` read-out with log/sign preprocessing (unfused gates);
- ``adam``: ``torch.optim.Adam(foreach=True)``, for scale.

Roofline.  Rates measured in the same run with the same threads: GEMM FLOP/s (a 2048^3 fp32 matmul), sigmoid
evaluations/s (``torch.sigmoid``, the better of a large tensor and a cache-resident one) and memory bandwidth (a
copy of 256 MiB, bytes read + written).  Per coordinate, counted from the network's config::

    FLOPs           = sum_l 2 (in_l + H) 4H + 2 H        matrix products and read-out (9,960 for the paper)
    transcendentals = 5 H L + 1                         3 sigmoid + 2 tanh per unit and layer, the log (201)
    bytes           = 2 * 4 S + 3 * 4                    state read and written (S = 2 H L), param r/w, grad read

    bound = max(FLOPs / GEMM rate + transcendentals / sigmoid rate, bytes / bandwidth)

(elementwise multiply-adds of the cell update are not counted: the bound is optimistic).

Peak temporary memory.  Each configuration runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536``, so every
allocation of 64 KiB or more is its own mapping, returned to the system when freed: the resident set then follows
the live memory.  After a warm-up step (which creates the optimizer state), the kernel's high-water mark is reset
(``/proc/self/clear_refs``), one step runs, and ``VmHWM - VmRSS before the step`` is the memory the step needed
beyond parameters, gradients and state.  Timing runs in another fresh process without that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer
from learned_torch_optim.kernels import native
from learned_torch_optim.kernels.blocked import pack_network
from learned_torch_optim.network import preprocess_log_sign

IMPLEMENTATIONS = ("fused", "blocked", "reference", "straightforward", "adam")


class StraightforwardLSTMOptimizer(torch.optim.Optimizer):
    """The per-tensor ``nn.LSTMCell`` loop of the public re-implementations, same network and same math."""

    def __init__(self, params, network: CoordinatewiseLSTM) -> None:
        super().__init__(params, {})
        self.cells = network.cells
        self.readout = network.readout
        self.hidden = network.hidden_size

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["hc"] = [(p.new_zeros(p.numel(), self.hidden),) * 2 for _ in self.cells]
                x = preprocess_log_sign(p.grad.reshape(-1), 10.0)
                new_hc = []
                for cell, hc in zip(self.cells, state["hc"]):
                    h, c = cell(x, hc)
                    new_hc.append((h, c))
                    x = h
                state["hc"] = new_hc
                p.add_(0.1 * self.readout(x).view_as(p))


def make_params(size: int) -> list[nn.Parameter]:
    """A 4-layer square MLP's weights and biases with about ``size`` parameters, gradients set."""
    width = max(1, round((size / 4) ** 0.5))
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(4):
        for shape in ((width, width), (width,)):
            param = nn.Parameter(torch.randn(shape, generator=generator) * 0.1)
            param.grad = torch.randn(shape, generator=generator) * 1e-3
            params.append(param)
    return params


def make_optimizer(implementation: str, params: list[nn.Parameter], network: CoordinatewiseLSTM):
    if implementation == "adam":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    if implementation == "straightforward":
        return StraightforwardLSTMOptimizer(params, network)
    return LearnedOptimizer(params, weights=network, implementation=implementation)


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(implementation: str, size: int, threads: int, repeats: int, mode: str) -> dict:
    """One configuration in this (fresh) process: step times, or the peak temporary memory of one step."""
    torch.set_num_threads(threads)
    params = make_params(size)
    network = CoordinatewiseLSTM()
    optimizer = make_optimizer(implementation, params, network)
    optimizer.step()  # warm-up: creates the state (and loads the compiled kernel)
    if mode == "memory":
        before = memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        optimizer.step()
        return {"peak_temporary_bytes": (memory_kib("VmHWM") - before) * 1024}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "parameters": sum(p.numel() for p in params)}


def run_child(implementation: str, size: int, threads: int, repeats: int, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, __file__, "--child", implementation, str(size), str(threads), str(repeats), mode]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_of(function, repeats: int = 5) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def machine_rates() -> dict[str, float]:
    """GEMM FLOP/s, sigmoid evaluations/s and copy bandwidth (bytes read + written per second)."""
    n = 2048
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    gemm = 2 * n**3 / best_of(lambda: torch.mm(a, b, out=c))
    rates = []
    for numel, calls in ((1 << 24, 1), (1 << 16, 256)):  # large (memory-bound) and cache-resident
        x, y = torch.randn(numel), torch.empty(numel)
        rates.append(
            numel * calls / best_of(lambda x=x, y=y, calls=calls: [torch.sigmoid(x, out=y) for _ in range(calls)])
        )
    big, copy = torch.randn(1 << 26), torch.empty(1 << 26)
    bandwidth = 2 * big.numel() * 4 / best_of(lambda: copy.copy_(big))
    return {"gemm_flops": gemm, "sigmoid_per_s": max(rates), "bandwidth_bytes": bandwidth}


def per_coordinate_cost(network: CoordinatewiseLSTM) -> dict[str, float]:
    """FLOPs, transcendentals and bytes of one coordinate's step (see the module docstring)."""
    hidden, layers = network.hidden_size, network.num_layers
    flops = sum(2 * ((network.num_inputs if layer == 0 else hidden) + hidden) * 4 * hidden for layer in range(layers))
    flops += 2 * (hidden if layers else network.num_inputs)
    transcendentals = 5 * hidden * layers + (network.preprocessing == "log_sign")
    return {"flops": flops, "transcendentals": transcendentals, "bytes": 2 * 4 * network.state_size + 3 * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, size, threads, repeats, mode = args.child
        print(json.dumps(child(implementation, int(size), int(threads), int(repeats), mode)))
        return

    torch.set_num_threads(args.threads)
    network = CoordinatewiseLSTM()
    kernel = native.load(pack_network(network, torch.device("cpu")))  # build once, before the children
    rates = machine_rates()
    cost = per_coordinate_cost(network)
    print(f"threads {args.threads}; compiled kernel: {'yes' if kernel else 'no (' + str(native.last_failure) + ')'}")
    print(
        f"rates: GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, sigmoid {rates['sigmoid_per_s'] / 1e9:.2f} G/s, "
        f"copy {rates['bandwidth_bytes'] / 1e9:.1f} GB/s; per coordinate {cost['flops']} FLOPs, "
        f"{cost['transcendentals']} transcendentals, {cost['bytes']} bytes"
    )
    header = f"{'params':>10} {'implementation':>15} {'step ms':>10} {'x roofline':>10} {'speed-up':>9} {'x Adam':>8}"
    print(header + f" {'peak temp MB':>13}")
    results = []
    for size in map(int, args.sizes):
        rows = {}
        for implementation in args.implementations:
            row = run_child(implementation, size, args.threads, args.repeats, "time")
            if not args.no_memory and "error" not in row:
                row.update(run_child(implementation, size, args.threads, 1, "memory"))
            rows[implementation] = row
        n = next((r["parameters"] for r in rows.values() if "parameters" in r), size)
        compute = n * (cost["flops"] / rates["gemm_flops"] + cost["transcendentals"] / rates["sigmoid_per_s"])
        bound = max(compute, n * cost["bytes"] / rates["bandwidth_bytes"])
        for implementation, row in rows.items():
            if "seconds" not in row:
                print(f"{n:>10} {implementation:>15} failed: {row.get('error')}")
                continue
            seconds = row["seconds"]
            roofline = f"{seconds / bound:.2f}" if implementation != "adam" else "-"
            straightforward = rows.get("straightforward", {}).get("seconds")
            adam = rows.get("adam", {}).get("seconds")
            speedup = f"{straightforward / seconds:.1f}x" if straightforward else "-"
            versus_adam = f"{seconds / adam:.1f}" if adam else "-"
            peak = row.get("peak_temporary_bytes")
            peak_text = f"{peak / 2**20:.2f}" if peak is not None else "-"
            print(
                f"{n:>10} {implementation:>15} {seconds * 1e3:>10.2f} {roofline:>10} {speedup:>9} {versus_adam:>8} "
                f"{peak_text:>13}"
            )
            results.append({"parameters": n, "implementation": implementation, "bound_seconds": bound, **row})
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rates": rates, "results": results}, indent=1))


if __name__ == "__main__":
    main()
