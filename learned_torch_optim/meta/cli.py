"""The ``learned-torch-optim`` command (also ``python -m learned_torch_optim.meta``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

from ..network import OUTPUTS, PREPROCESSINGS
from ..weights import DEFAULT_WEIGHTS, list_pretrained
from .tasks import TASK_DESCRIPTIONS


def _task_names(text: str) -> str:
    names = [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in TASK_DESCRIPTIONS]
    if unknown or not all(names):
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"built-in tasks: {', '.join(TASK_DESCRIPTIONS)}"
        )
    return ",".join(names)


NETWORK_FLAGS = (
    "hidden_size",
    "num_layers",
    "preprocessing",
    "preprocessing_p",
    "output_scale",
    "momentum_decays",
    "second_moment_decay",
    "step_timescales",
    "readout_skip",
    "output",
    "magnitude_scale",
    "update_clip",
    "gradient_rms_clip",
)
"""The ``train`` flags that make up ``TrainConfig.network`` (``CoordinatewiseLSTM`` arguments)."""


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="meta-train a coordinatewise LSTM optimizer by truncated BPTT",
        description="Meta-train a CoordinatewiseLSTM on a task family (Andrychowicz et al. 2016) and write weights "
        "(config.json, model.safetensors, README.md model card) plus checkpoint.pt and metrics.jsonl into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--task",
        required=True,
        type=_task_names,
        help=f"built-in task family, or several separated by commas (a mixture); one of {', '.join(TASK_DESCRIPTIONS)}",
    )
    p.add_argument("--out", required=True, help="run directory (weights, checkpoint, metrics log)")
    p.add_argument(
        "--iterations",
        type=int,
        default=1000,
        help="iterations: each optimises --meta-batch-size fresh problems over the full horizon",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with one sub-folder per dataset (DIR/mnist/...)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (--iterations may change, not below the iteration "
        "reached; a changed command is recorded in the model card after the first)",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="train into --out even if it holds another run or other files (the files the run writes are replaced)",
    )
    p.add_argument("--horizon", type=int, default=100, help="optimizee steps per problem")
    p.add_argument("--unroll", type=int, default=20, help="truncation length of BPTT")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the meta-optimizer")
    p.add_argument(
        "--meta-lr-schedule", choices=["constant", "cosine"], default="constant", help="of the meta learning rate"
    )
    p.add_argument("--meta-batch-size", type=int, default=None, help="problems per iteration (task default)")
    p.add_argument("--clip-grad-norm", type=float, default=None, help="clip the meta-gradient to this norm")
    p.add_argument(
        "--meta-loss-final",
        action="store_true",
        help="add f(theta_T), the loss after a truncation's last update, to its meta-loss (as the original code)",
    )
    p.add_argument(
        "--second-derivatives",
        action="store_true",
        help="differentiate through the optimizee's gradients too (the exact meta-gradient; the paper drops it)",
    )
    p.add_argument(
        "--meta-loss",
        choices=["sum", "log"],
        default="sum",
        help="sum of the losses over a truncation (the paper) or of their logarithms (Wichrowska et al. 2017)",
    )
    p.add_argument(
        "--horizon-curriculum",
        type=int,
        nargs="+",
        default=[],
        metavar="H",
        help="training horizons for equal consecutive stages of the run (Chen et al. 2020)",
    )
    p.add_argument(
        "--param-scale",
        type=float,
        default=None,
        help="rescale each training problem's coordinates by factors log-uniform in [1/S, S] (Lv et al. 2017)",
    )
    p.add_argument(
        "--init",
        choices=["default", "forget_bias", "adam"],
        default="default",
        help="'forget_bias': +1 on the forget gates' biases (as the original code's LSTM); 'adam': start as Adam "
        "(lr = --output-scale; needs adam_normalized inputs, momentum 0.9, --readout-skip)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="WEIGHTS",
        help="start from these weights (packaged name, directory or hub repo id) and their network config, to which "
        "--momentum-decays and --step-timescales can add inputs (zero weights at first) and --update-clip and "
        "--gradient-rms-clip can set step bounds; leave the other network flags at their defaults",
    )
    p.add_argument("--validate-every", type=int, default=50, help="iterations between validations")
    p.add_argument("--validation-problems", type=int, default=10)
    p.add_argument(
        "--validation-horizon", type=int, default=None, help="optimizee steps per validation problem (--horizon)"
    )
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--hidden-size", type=int, default=20)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--preprocessing", choices=list(PREPROCESSINGS), default="log_sign")
    p.add_argument("--preprocessing-p", type=float, default=10.0)
    p.add_argument("--output-scale", type=float, default=0.1)
    p.add_argument("--momentum-decays", type=float, nargs="*", default=[], help="extra inputs: gradient averages")
    p.add_argument("--second-moment-decay", type=float, default=0.999, help="beta2 of adam_normalized inputs")
    p.add_argument("--step-timescales", type=float, nargs="*", default=[], help="extra inputs: tanh(step / tau)")
    p.add_argument("--readout-skip", action="store_true", help="the read-out also sees the network's inputs")
    p.add_argument("--output", choices=list(OUTPUTS), default="additive")
    p.add_argument("--magnitude-scale", type=float, default=1.0, help="of the direction_magnitude output")
    p.add_argument("--update-clip", type=float, default=None, help="bound on each coordinate's update |u_t|")
    p.add_argument(
        "--gradient-rms-clip",
        type=float,
        default=None,
        help="clip each gradient to this many times its running RMS before the inputs (adam_normalized only)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the network and the problems, e.g. cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(network_defaults={name: p.get_default(name) for name in NETWORK_FLAGS})


def _init_distributed(device: str) -> str:
    """Join the process group when started by torchrun; returns this process's device."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(device)
    return device


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .trainer import FINE_TUNING_CHANGES, MetaTrainer, TrainConfig

    device = _init_distributed(args.device)
    network = {name: getattr(args, name) for name in NETWORK_FLAGS}
    if args.init_from is not None:
        network = {name: value for name, value in network.items() if value != args.network_defaults[name]}
        fixed = [name for name in network if name not in FINE_TUNING_CHANGES]
        if fixed:
            flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
            raise SystemExit(
                f"--init-from {args.init_from}: the network comes from those weights (which can only gain inputs "
                f"with --momentum-decays and --step-timescales, or take --update-clip and --gradient-rms-clip); "
                f"drop {flags}"
            )

    config = TrainConfig(
        task=args.task,
        iterations=args.iterations,
        horizon=args.horizon,
        unroll=args.unroll,
        meta_lr=args.meta_lr,
        meta_lr_schedule=args.meta_lr_schedule,
        meta_batch_size=args.meta_batch_size,
        clip_grad_norm=args.clip_grad_norm,
        meta_loss_final=args.meta_loss_final,
        second_derivatives=args.second_derivatives,
        meta_loss=args.meta_loss,
        init=args.init,
        init_weights=args.init_from,
        param_scale=args.param_scale,
        horizon_curriculum=args.horizon_curriculum,
        seed=args.seed,
        validate_every=args.validate_every,
        validation_problems=args.validation_problems,
        validation_horizon=args.validation_horizon,
        checkpoint_every=args.checkpoint_every,
        data_dir=args.data_dir,
        device=device,
        network=network,
        command="learned-torch-optim " + " ".join(shlex.quote(a) for a in argv if a not in ("--resume", "--overwrite")),
    )
    trainer = MetaTrainer(config, args.out)
    out = trainer.train(resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if trainer.rank == 0:
        print(f"weights written to {out} (load with LearnedOptimizer(params, weights={str(out)!r}))")
    if trainer.world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the weights; no rank tears the group down while another uses it
        dist.destroy_process_group()
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


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from .evaluate import BASELINES, DEFAULT_BASELINES

    p = subparsers.add_parser(
        "evaluate",
        help="compare learned weights with tuned Adam, RMSprop, SGD and NAG on a task",
        description="Run the learned optimizer (lr 1) and the baselines (each lr tuned on half-decades from 1e-4 to 1) "
        "on the same --problems problems and minibatches for --steps steps; score each by the loss summed over the "
        "horizon, averaged over problems. Writes results.json, results.md and curves.png into --out and prints a "
        "table. Baseline runs are cached, so evaluating new weights reruns only the learned optimizer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--weights",
        default=None,
        help="packaged name, save_pretrained folder or hub repo id; omit to evaluate the baselines only",
    )
    p.add_argument("--revision", default=None, help="branch, tag or commit when --weights is a hub repo id")
    p.add_argument(
        "--task",
        required=True,
        type=_task_names,
        help=f"built-in task family, or several separated by commas (a mixture); one of {', '.join(TASK_DESCRIPTIONS)}",
    )
    p.add_argument("--out", required=True, help="folder for results.json, results.md and curves.png")
    p.add_argument("--problems", type=_int_at_least(1), default=10, help="problems every optimizer runs on")
    p.add_argument("--steps", type=_int_at_least(1), default=100, help="optimizer steps per problem")
    p.add_argument("--split", choices=["test", "train"], default="test", help="data split of the MNIST tasks")
    p.add_argument("--data-dir", default=None, help="folder with one sub-folder per dataset (DIR/mnist/...)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="selects the evaluation problems")
    p.add_argument(
        "--optimizers", nargs="*", choices=list(BASELINES), default=list(DEFAULT_BASELINES), help="baselines to run"
    )
    p.add_argument("--lr-grid", nargs="+", type=float, default=None, help="baseline lrs; None: 1e-4, 10**-3.5, ..., 1")
    p.add_argument("--learned-lr-grid", nargs="+", type=float, default=[1.0], help="lrs of the learned optimizer")
    p.add_argument("--cache-dir", default=None, help="baseline cache; None: ~/.cache/learned_torch_optim/baselines")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the baseline cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluate import HALF_DECADES, evaluate, format_results_table

    result = evaluate(
        args.weights,
        args.task,
        problems=args.problems,
        steps=args.steps,
        lr_grid=args.lr_grid or HALF_DECADES,
        learned_lr_grid=args.learned_lr_grid,
        optimizers=args.optimizers,
        seed=args.seed,
        split=args.split,
        data_dir=args.data_dir,
        revision=args.revision,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    written = result.save(args.out)
    print(format_results_table(result))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _add_publish(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish",
        help="upload a run's weights and a model card to the Hugging Face hub",
        description="Upload config.json, model.safetensors and a generated model card README.md (recipe, evaluation, "
        "usage) from RUN_DIR to a hub model repo, in one commit. Uses the logged-in token (hf auth login) or HF_TOKEN.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of `train` (config.json, model.safetensors)")
    p.add_argument("--repo-id", required=True, help="hub model repo, org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    p.add_argument("--commit-message", default=None, help="summary line of the hub commit")
    p.add_argument("--dry-run", action="store_true", help="print the files and the model card; upload nothing")


def _publish(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .publish import publish

    result = publish(
        args.run_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    if result.commit is None:
        print(result.plan.describe())
        print("dry run: nothing uploaded")
    else:
        revision_arg = f", revision={result.commit.oid!r}" if result.commit.oid else ""
        print(f"published {', '.join(result.plan.files)} to {args.repo_id}: {result.commit.commit_url}")
        print(f"load with LearnedOptimizer(params, weights={args.repo_id!r}{revision_arg})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learned-torch-optim",
        description="Meta-train, evaluate and publish coordinatewise LSTM optimizers for PyTorch.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    subparsers.add_parser("list", help="list packaged weights and built-in tasks")
    _add_publish(subparsers)
    _add_evaluate(subparsers)
    return parser


COMMANDS = {"train": _train, "list": _list, "publish": _publish, "evaluate": _evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"learned-torch-optim {args.command}: error: {error}", file=sys.stderr)
        return 2
