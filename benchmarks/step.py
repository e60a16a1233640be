"""Optimizer step time and peak temporary memory against the roofline, on the CPU, for each shipped weight set.

    python benchmarks/step.py [--weights l2l-general ...] [--sizes 1e4 1e5 1e6 1e7] [--repeats 5] [--threads N]
                              [--implementations ...] [--reference-limit 2e6] [--json F]

For each weight set (default: every packaged one, the default weights first) and model size (parameters of a
4-layer square MLP, weights and biases: a few big tensors and a few small ones) it measures one
``optimizer.step()`` of:

- ``fused``: ``LearnedOptimizer(implementation="fused")`` (blocked, compiled kernel);
- ``blocked``: ``LearnedOptimizer(implementation="blocked")`` (blocked, torch operations, the fallback);
- ``reference``: ``LearnedOptimizer(implementation="reference")`` (one batched call of the network; skipped above
  ``--reference-limit`` parameters, where its temporaries run to gigabytes);
- ``straightforward``: what the public re-implementations of the paper do: a loop over tensors, each through
  stacked ``nn.LSTMCell`` and a ``Linear`` read-out with log/sign preprocessing (unfused gates); for the paper's
  form only;
- ``adam``: ``torch.optim.Adam(foreach=True)``, for scale.

Roofline.  Rates measured with the same threads in the process that times the step, just before it (the machine's
speed drifts over a run of several minutes on shared hosts): GEMM FLOP/s (a 2048^3 fp32 matmul), sigmoid
evaluations/s (``torch.sigmoid``, the better of a large tensor and a cache-resident one) and memory bandwidth (a
copy of 256 MiB, bytes read + written), each the best of 5.  Per coordinate, counted from the network's config
(:func:`per_coordinate_cost`)::

    FLOPs           = sum_l 2 (in_l + H) 4H + 2 R O      matrix products and the read-out of R inputs, O outputs
    transcendentals = 5 H L + logs + tanh(t/tau) + sqrt + exp    3 sigmoid + 2 tanh per unit and layer; the log of
                                                        each log/sign value, the step inputs, Adam's square root,
                                                        the magnitude's exponential
    bytes           = 2 * 4 S + 3 * 4                    state read and written (S floats), param r/w, grad read

    bound = max(FLOPs / GEMM rate + transcendentals / sigmoid rate, bytes / bandwidth)

(elementwise multiply-adds of the cell update and of the gradient averages are not counted: the bound is
optimistic).

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

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, list_pretrained
from learned_torch_optim.kernels import native
from learned_torch_optim.kernels.blocked import pack_network
from learned_torch_optim.network import preprocess_log_sign
from learned_torch_optim.weights import DEFAULT_WEIGHTS, load_weights

IMPLEMENTATIONS = ("fused", "blocked", "reference", "straightforward", "adam")


class StraightforwardLSTMOptimizer(torch.optim.Optimizer):
    """The per-tensor ``nn.LSTMCell`` loop of the public re-implementations, same network and same math (the
    paper's form with log/sign preprocessing)."""

    def __init__(self, params, network: CoordinatewiseLSTM) -> None:
        super().__init__(params, {})
        self.cells = network.cells
        self.readout = network.readout
        self.hidden = network.hidden_size
        self.p = network.preprocessing_p
        self.output_scale = network.output_scale

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["hc"] = [(p.new_zeros(p.numel(), self.hidden),) * 2 for _ in self.cells]
                x = preprocess_log_sign(p.grad.reshape(-1), self.p).flatten(1)
                new_hc = []
                for cell, hc in zip(self.cells, state["hc"]):
                    h, c = cell(x, hc)
                    new_hc.append((h, c))
                    x = h
                state["hc"] = new_hc
                p.add_(self.output_scale * self.readout(x).view_as(p))


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


def applies(implementation: str, network: CoordinatewiseLSTM, size: int, reference_limit: float) -> bool:
    """Whether ``implementation`` is measured for ``network`` at ``size`` parameters."""
    if implementation == "straightforward":
        return network.is_paper_rule and network.preprocessing == "log_sign" and network.num_layers > 0
    return implementation != "reference" or size <= reference_limit


def child(weights: str, implementation: str, size: int, threads: int, repeats: int, mode: str) -> dict:
    """One configuration in this (fresh) process: step times, or the peak temporary memory of one step."""
    torch.set_num_threads(threads)
    params = make_params(size)
    network = load_weights(weights)
    optimizer = make_optimizer(implementation, params, network)
    optimizer.step()  # warm-up: creates the state (and loads the compiled kernel)
    if mode == "memory":
        before = memory_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        optimizer.step()
        return {"peak_temporary_bytes": (memory_kib("VmHWM") - before) * 1024}
    rates = machine_rates() if implementation != "adam" else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "parameters": sum(p.numel() for p in params), "rates": rates}


def run_child(weights: str, implementation: str, size: int, threads: int, repeats: int, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, __file__, "--child", weights, implementation, str(size), str(threads), str(repeats)]
    result = subprocess.run([*command, mode], env=env, capture_output=True, text=True, check=False)
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
    flops += 2 * network.readout.in_features * network.readout.out_features
    values = 1 + len(network.momentum_decays)
    transcendentals = 5 * hidden * layers + len(network.step_timescales)
    transcendentals += values * (network.preprocessing == "log_sign") + (network.preprocessing == "adam_normalized")
    transcendentals += network.output == "direction_magnitude"
    return {"flops": flops, "transcendentals": transcendentals, "bytes": 2 * 4 * network.state_size + 3 * 4}


def roofline_seconds(cost: dict[str, float], rates: dict[str, float], n: int) -> float:
    """The bound on one step of ``n`` coordinates: ``max(compute, memory)`` (see the module docstring)."""
    compute = n * (cost["flops"] / rates["gemm_flops"] + cost["transcendentals"] / rates["sigmoid_per_s"])
    return max(compute, n * cost["bytes"] / rates["bandwidth_bytes"])


def measure_weights(weights: str, args: argparse.Namespace) -> list[dict]:
    """The table of one weight set: every implementation at every size."""
    network = load_weights(weights)
    kernel = native.load(pack_network(network, torch.device("cpu")))  # build once, before the children
    cost = per_coordinate_cost(network)
    print(
        f"\n{weights}: compiled kernel {'yes' if kernel else 'no (' + str(native.last_failure) + ')'}; per "
        f"coordinate {cost['flops']} FLOPs, {cost['transcendentals']} transcendentals, {cost['bytes']} bytes"
    )
    header = f"{'params':>10} {'implementation':>15} {'step ms':>10} {'bound ms':>9} {'x roofline':>10} {'speed-up':>9}"
    print(header + f" {'x Adam':>8} {'peak temp MB':>13}")
    results = []
    for size in map(int, args.sizes):
        rows = {}
        for implementation in args.implementations:
            if not applies(implementation, network, size, args.reference_limit):
                continue
            row = run_child(weights, implementation, size, args.threads, args.repeats, "time")
            if not args.no_memory and "error" not in row:
                row.update(run_child(weights, implementation, size, args.threads, 1, "memory"))
            rows[implementation] = row
        n = next((r["parameters"] for r in rows.values() if "parameters" in r), size)
        baseline = "straightforward" if "straightforward" in rows else "reference"
        for implementation, row in rows.items():
            if "seconds" not in row:
                print(f"{n:>10} {implementation:>15} failed: {row.get('error')}")
                continue
            seconds = row["seconds"]
            bound = roofline_seconds(cost, row["rates"], n) if row.get("rates") else None
            bound_text = f"{bound * 1e3:.2f}" if bound else "-"
            roofline = f"{seconds / bound:.2f}" if bound else "-"
            slow = rows.get(baseline, {}).get("seconds")
            adam = rows.get("adam", {}).get("seconds")
            speedup = f"{slow / seconds:.1f}x" if slow and implementation != "adam" else "-"
            versus_adam = f"{seconds / adam:.1f}" if adam else "-"
            peak = row.get("peak_temporary_bytes")
            peak_text = f"{peak / 2**20:.2f}" if peak is not None else "-"
            print(
                f"{n:>10} {implementation:>15} {seconds * 1e3:>10.2f} {bound_text:>9} {roofline:>10} {speedup:>9} "
                f"{versus_adam:>8} {peak_text:>13}"
            )
            results.append(
                {"weights": weights, "parameters": n, "implementation": implementation, "bound_seconds": bound, **row}
            )
    print(f"(speed-up: over {baseline}, the slowest way of computing the same step measured here)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(list_pretrained(), key=lambda name: name != DEFAULT_WEIGHTS)
    parser.add_argument("--weights", nargs="+", default=shipped, help="weight sets (default: every packaged one)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--reference-limit", type=float, default=2e6, help="largest size the reference runs at")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        weights, implementation, size, threads, repeats, mode = args.child
        print(json.dumps(child(weights, implementation, int(size), int(threads), int(repeats), mode)))
        return

    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; bound ms: the roofline from rates measured in each timing process")
    results = [row for weights in args.weights for row in measure_weights(weights, args)]
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
