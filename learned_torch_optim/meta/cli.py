"""The ``learned-torch-optim`` command (also ``python -m learned_torch_optim.meta``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..network import OPTION_TYPES, NetworkConfig
from ..weights import DEFAULT_WEIGHTS, list_pretrained
from .tasks import TASK_DESCRIPTIONS
from .trainer import FINE_TUNING_CHANGES, MetaTrainer, TrainConfig


def _task_names(text: str) -> str:
    names = [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in TASK_DESCRIPTIONS]
    if unknown or not all(names):
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"built-in tasks: {', '.join(TASK_DESCRIPTIONS)}"
        )
    return ",".join(names)


SETTINGS = {setting.name: setting for setting in fields(TrainConfig)}
"""The training settings, each declared once in :class:`TrainConfig`; every one with a flag is a ``train`` flag."""
SETTING_TYPES = {"task": _task_names}
"""Settings whose flag reads more than the field's type says."""
NETWORK_OPTIONS = {option.name: option for option in fields(NetworkConfig)}
"""The network options, each declared once in :class:`NetworkConfig`; every one is a ``train`` flag."""


def network_default(name: str) -> Any:
    """The default of network option ``name`` as its flag holds it (a sequence as a list)."""
    default = NETWORK_OPTIONS[name].default
    return list(default) if isinstance(default, tuple) else default


def _add_argument(
    parser: argparse._ActionsContainer, flag: str, dest: str, hint: Any, default: Any, help: str, **options: Any
) -> None:
    """A flag for a value of type ``hint``: ``X | None`` takes an ``X``, a ``Literal`` one of its values, a ``bool``
    is a switch, a list or sequence takes any number of values."""
    if get_origin(hint) is types.UnionType:
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if get_origin(hint) is Literal:
        options = {"choices": list(get_args(hint)), **options}
        hint = str
    if hint is bool:
        options = {"action": "store_true", **options}
    elif get_origin(hint) in (list, tuple):
        element = get_args(hint)[0]  # list[X] or tuple[X, ...]
        options = {"type": element, "nargs": "*", **options}
        default = list(default)
    else:
        options = {"type": hint, **options}
    if options.get("required"):
        default = argparse.SUPPRESS  # a required flag's default is never used: not shown in --help either
    parser.add_argument(flag, dest=dest, default=default, help=help.replace("%", "%%"), **options)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="meta-train a coordinatewise LSTM optimizer by truncated BPTT",
        description="Meta-train a CoordinatewiseLSTM on a task family (Andrychowicz et al. 2016) and write weights "
        "(config.json, model.safetensors, README.md model card) plus checkpoint.pt and metrics.jsonl into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="run directory (weights, checkpoint, metrics log)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    training = p.add_argument_group("training settings (TrainConfig)")
    hints = get_type_hints(TrainConfig)
    for name, setting in SETTINGS.items():
        flag = setting.metadata["flag"]
        if flag:
            default = setting.default_factory() if setting.default is MISSING else setting.default
            options = {**setting.metadata["argparse"]}
            if name in SETTING_TYPES:
                options["type"] = SETTING_TYPES[name]
            flag = "--" + name.replace("_", "-") if flag is True else flag
            _add_argument(training, flag, name, hints[name], default, setting.metadata["help"], **options)

    network = p.add_argument_group("network options (NetworkConfig: CoordinatewiseLSTM's arguments)")
    for name, option in NETWORK_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        _add_argument(network, flag, name, OPTION_TYPES[name], network_default(name), option.metadata["help"])


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


def train_config(args: argparse.Namespace, argv: Sequence[str], device: str) -> TrainConfig:
    """The :class:`TrainConfig` of a parsed ``train`` command ``argv``: its settings, its network options (with
    ``--init-from``, only those changed from their defaults) and the command, for the model card."""
    network = {name: getattr(args, name) for name in NETWORK_OPTIONS}
    if args.init_from is not None:
        network = {name: value for name, value in network.items() if value != network_default(name)}
        fixed = [name for name in network if name not in FINE_TUNING_CHANGES]
        if fixed:
            flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
            raise SystemExit(
                f"--init-from {args.init_from}: the network comes from those weights (which can only gain inputs "
                f"with --momentum-decays and --step-timescales, or take --update-clip and --gradient-rms-clip); "
                f"drop {flags}"
            )
    settings = {name: getattr(args, name) for name, setting in SETTINGS.items() if setting.metadata["flag"]}
    command = "learned-torch-optim " + " ".join(shlex.quote(a) for a in argv if a not in ("--resume", "--overwrite"))
    return TrainConfig(**{**settings, "device": device, "network_config": network, "command": command})


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = train_config(args, argv, _init_distributed(args.device))
    trainer = MetaTrainer(config, args.out)
    out = trainer.train(resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if trainer.rank == 0:
        params = "model.named_parameters()" if trainer.rule is not None else "params"
        print(f"weights written to {out} (load with LearnedOptimizer({params}, weights={str(out)!r}))")
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
    from .evaluation import BASELINES, DEFAULT_BASELINES

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
        help="packaged name, save_pretrained folder or hub repo id, of one network or a weight set (which needs a "
        "task whose problems name their parameters); omit to evaluate the baselines only",
    )
    p.add_argument("--revision", default=None, help="branch, tag or commit when --weights is a hub repo id")
    p.add_argument("--task", required=True, type=_task_names, help=SETTINGS["task"].metadata["help"])
    p.add_argument("--out", required=True, help="folder for results.json, results.md and curves.png")
    p.add_argument("--problems", type=_int_at_least(1), default=10, help="problems every optimizer runs on")
    p.add_argument("--steps", type=_int_at_least(1), default=100, help="optimizer steps per problem")
    p.add_argument("--split", choices=["test", "train"], default="test", help="data split of the MNIST tasks")
    p.add_argument("--data-dir", default=None, help=SETTINGS["data_dir"].metadata["help"])
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="selects the evaluation problems")
    p.add_argument(
        "--optimizers", nargs="*", choices=list(BASELINES), default=list(DEFAULT_BASELINES), help="baselines to run"
    )
    p.add_argument("--lr-grid", nargs="+", type=float, default=None, help="baseline lrs; None: 1e-4, 10**-3.5, ..., 1")
    p.add_argument(
        "--learned-lr-grid",
        nargs="+",
        type=float,
        default=[1.0],
        help="lrs of the learned optimizer, as factors on its weights' nominal_lr (each network's, in a weight set; 1: "
        "as meta-trained)",
    )
    p.add_argument("--cache-dir", default=None, help="baseline cache; None: ~/.cache/learned_torch_optim/baselines")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the baseline cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluation import HALF_DECADES, evaluate, format_results_table

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
        help="upload a run's weights (one network or a weight set) and a model card to the Hugging Face hub",
        description="Upload config.json, model.safetensors (or a weight set's weight_set.json and network folders) and "
        "a generated model card README.md (recipe, evaluation, usage) from RUN_DIR to a hub model repo, in one commit. "
        "Uses the logged-in token (hf auth login) or HF_TOKEN.",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="run directory of `train` (config.json, model.safetensors; or weight_set.json and a folder per network)",
    )
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
        params = "model.named_parameters()" if result.plan.is_set else "params"
        print(f"load with LearnedOptimizer({params}, weights={args.repo_id!r}{revision_arg})")
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
