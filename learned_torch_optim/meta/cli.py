"""The ``learned-torch-optim`` command (also ``python -m learned_torch_optim.meta``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ..weights import DEFAULT_WEIGHTS, list_pretrained
from .tasks import TASK_DESCRIPTIONS


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="meta-train a coordinatewise LSTM optimizer by truncated BPTT",
        description="Meta-train a CoordinatewiseLSTM on a task family (Andrychowicz et al. 2016) and write weights "
        "(config.json, model.safetensors, README.md model card) plus checkpoint.pt and metrics.jsonl into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=sorted(TASK_DESCRIPTIONS), help="built-in task family")
    p.add_argument("--out", required=True, help="run directory (weights, checkpoint, metrics log)")
    p.add_argument("--iterations", type=int, default=1000, help="problems optimised, each over the full horizon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with one sub-folder per dataset (DIR/mnist/...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--horizon", type=int, default=100, help="optimizee steps per problem")
    p.add_argument("--unroll", type=int, default=20, help="truncation length of BPTT")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the meta-optimizer")
    p.add_argument("--meta-batch-size", type=int, default=None, help="problems per iteration (task default)")
    p.add_argument("--clip-grad-norm", type=float, default=None, help="clip the meta-gradient to this norm")
    p.add_argument("--validate-every", type=int, default=50, help="iterations between validations")
    p.add_argument("--validation-problems", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--hidden-size", type=int, default=20)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--preprocessing", choices=["log_sign", "identity"], default="log_sign")
    p.add_argument("--preprocessing-p", type=float, default=10.0)
    p.add_argument("--output-scale", type=float, default=0.1)
    p.add_argument("--device", default="cpu", help="torch device for the network and the problems, e.g. cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .trainer import MetaTrainer, TrainConfig

    config = TrainConfig(
        task=args.task,
        iterations=args.iterations,
        horizon=args.horizon,
        unroll=args.unroll,
        meta_lr=args.meta_lr,
        meta_batch_size=args.meta_batch_size,
        clip_grad_norm=args.clip_grad_norm,
        seed=args.seed,
        validate_every=args.validate_every,
        validation_problems=args.validation_problems,
        checkpoint_every=args.checkpoint_every,
        data_dir=args.data_dir,
        device=args.device,
        network={
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "preprocessing": args.preprocessing,
            "preprocessing_p": args.preprocessing_p,
            "output_scale": args.output_scale,
        },
        command="learned-torch-optim " + " ".join(shlex.quote(a) for a in argv if a != "--resume"),
    )
    out = MetaTrainer(config, args.out).train(resume=args.resume, progress=not args.no_progress)
    print(f"weights written to {out} (load with LearnedOptimizer(params, weights={str(out)!r}))")
    return 0


def _list(args: argparse.Namespace, argv: Sequence[str]) -> int:
    print("Packaged weights (LearnedOptimizer(params, weights=NAME)):")
    packaged = list_pretrained()
    for name, description in packaged.items():
        marker = " (default)" if name == DEFAULT_WEIGHTS else ""
        print(f"  {name}{marker}: {description}")
    if not packaged:
        print("  (none)")
    print("Built-in tasks (learned-torch-optim train --task NAME):")
    for name, description in TASK_DESCRIPTIONS.items():
        print(f"  {name}: {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learned-torch-optim",
        description="Meta-train, evaluate and publish coordinatewise LSTM optimizers for PyTorch.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    subparsers.add_parser("list", help="list packaged weights and built-in tasks")
    return parser


COMMANDS = {"train": _train, "list": _list}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"learned-torch-optim {args.command}: error: {error}", file=sys.stderr)
        return 2
