"""Publishing a meta-training run to the Hugging Face hub: its weights and a model card.

``learned-torch-optim publish RUN_DIR --repo-id org/name`` uploads the weights and a model card in one commit:

- the weight files as ``train`` wrote them (checked first: they must load strictly): ``config.json`` and
  ``model.safetensors`` for one network, or for a weight set (one network per kind of parameter, paper section 3.3)
  ``weight_set.json`` and each network's two files in the folder of its name;
- ``README.md``, a model card built here: YAML front matter (``library_name: learned_torch_optim``, the
  ``learned-optimizer`` tag, ``license: mit``), a usage snippet, the network's settings (a set's: its rule and each
  network's), the meta-training recipe (the ``## Meta-training recipe`` section of the run's own ``README.md``), the
  evaluation (the run folder's ``results.json`` from ``learned-torch-optim evaluate``, when there is one) and the
  sha256 of every weight file.

The same commit deletes the top-level files of the other kind of weights where the branch has them (a set's
``weight_set.json`` when publishing one network, a network's ``config.json`` and ``model.safetensors`` when
publishing a set), so that the repo loads as what was published.  ``--dry-run`` builds the same card and prints
what would be uploaded without any network access.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, ModelCardData

from ..weight_set import SET_FILE, NetworkRule
from ..weights import load_weight_set, load_weights, resolve_weights

WEIGHT_FILES = ("config.json", "model.safetensors")
"""The files of one network (``CoordinatewiseLSTM.save_pretrained``); a weight set has them in each network's
folder, and ``weight_set.json``."""
CARD_FILE = "README.md"
RECIPE_HEADING = "## Meta-training recipe"
CARD_TAGS = ["learned-optimizer", "optimizer", "l2l", "pytorch"]
PAPER_URL = "https://arxiv.org/abs/1606.04474"
REPO_URL = "https://github.com/learned-torch-optim/learned_torch_optim"

_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME_PART}/{_NAME_PART}")


class PublishError(ValueError):
    """A run that cannot be published, or a hub that refused it; the message names the run or the repo."""


@dataclass
class PublishPlan:
    """What :func:`publish` uploads: file contents by path in the repo (the card last)."""

    run_dir: Path
    repo_id: str
    revision: str | None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def card(self) -> str:
        return self.files[CARD_FILE].decode("utf-8")

    @property
    def is_set(self) -> bool:
        """Whether the plan publishes a weight set (``weight_set.json`` and a folder per network)."""
        return SET_FILE in self.files

    @property
    def replaced(self) -> tuple[str, ...]:
        """The top-level files of the other kind of weights, deleted from the branch where it has them."""
        return WEIGHT_FILES if self.is_set else (SET_FILE,)

    def describe(self) -> str:
        """A listing of the files with their sizes, followed by the model card."""
        target = self.repo_id + (f" (branch {self.revision})" if self.revision else "")
        lines = [f"Would upload to {target} from {self.run_dir}:"]
        lines += [f"  {name:<24} {len(data):>10,} bytes" for name, data in self.files.items()]
        lines += [f"and delete, where the branch has them: {', '.join(self.replaced)}"]
        lines += ["", f"--- {CARD_FILE} ---", self.card.rstrip(), f"--- end of {CARD_FILE} ---"]
        return "\n".join(lines)


@dataclass
class PublishResult:
    """The outcome of :func:`publish`: the plan, and the hub commit (``None`` for a dry run)."""

    plan: PublishPlan
    commit: CommitInfo | None


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it has the form ``org/name``; raise :class:`PublishError` otherwise."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise PublishError(
            f"repo id {repo_id!r} does not look like 'org/name' (letters, digits, '-', '_' and '.', "
            "one '/', at most 96 characters each side)"
        )
    return repo_id


def extract_recipe(readme: str) -> str | None:
    """The ``## Meta-training recipe`` section of a run's README (up to the next ``## `` heading), or None."""
    lines = readme.splitlines()
    for start, line in enumerate(lines):
        if line.strip() == RECIPE_HEADING:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            return "\n".join(lines[start:end]).strip()
    return None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def evaluation_markdown(run_dir: Path) -> str | None:
    """The evaluation section of the card: the run's ``results.json`` (from ``evaluate``) as a table, or None.

    Raises:
        PublishError: the file is not an ``evaluate`` result, or it evaluated other weights than the run's.
    """
    results_file = run_dir / "results.json"
    if not results_file.is_file():
        return None
    from .evaluation import format_results_markdown

    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
        evaluated = results.get("weights_sha256")
        own = resolve_weights(run_dir).weights_identity.sha256
        if evaluated != own:
            raise PublishError(
                f"{results_file} evaluated weights with sha256 {evaluated}, not the weights in {run_dir} ({own}); "
                f"rerun `learned-torch-optim evaluate --weights {run_dir} ... --out {run_dir}` or remove it"
            )
        rendered = format_results_markdown(results)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise PublishError(
            f"{results_file} is not a results.json written by `learned-torch-optim evaluate`: {error!r}"
        ) from error
    return f"From `results.json` (written by `learned-torch-optim evaluate`):\n\n{rendered.strip()}"


def weight_files(run_dir: Path) -> dict[str, bytes]:
    """The weight files of a run folder by their path in the repo, loaded strictly first (a corrupt or mismatched
    file is refused before anything is uploaded): one network's ``config.json`` and ``model.safetensors``, or a
    weight set's ``weight_set.json`` and each network's two files (``NAME/config.json``, ...), in the rule's order.

    Raises:
        PublishError: a folder of one network lacks one of its two files.
        WeightsError: the files do not load (a set's missing file, bad safetensors, tensors not matching a config).
    """
    if (run_dir / SET_FILE).is_file():
        networks = load_weight_set(run_dir).networks  # the rule and every network read strictly; a missing file named
        names = [SET_FILE, *(f"{network}/{name}" for network in networks for name in WEIGHT_FILES)]
    else:
        for name in WEIGHT_FILES:
            if not (run_dir / name).is_file():
                raise PublishError(
                    f"run folder {str(run_dir)!r} has no {name} (expected the output of `learned-torch-optim train`: "
                    f"{', '.join(WEIGHT_FILES)}, or a weight set's {SET_FILE} and a folder per network)"
                )
        load_weights(run_dir)
        names = list(WEIGHT_FILES)
    return {name: (run_dir / name).read_bytes() for name in names}


def _network_markdown(files: dict[str, bytes]) -> list[str]:
    """The card's description of the weights: one network's settings, or a set's rule and each network's."""
    if SET_FILE not in files:
        config = json.loads(files["config.json"])
        rows = [f"| {key} | {_cell(value)} |" for key, value in config.items()]
        return ["## Network", "", "| setting | value |", "| --- | --- |", *rows, ""]
    rule = NetworkRule.from_json(json.loads(files[SET_FILE]), SET_FILE)
    configs = {network: json.loads(files[f"{network}/config.json"]) for network in rule.networks}
    keys = list(dict.fromkeys(key for config in configs.values() for key in config))
    return [
        "## Networks",
        "",
        f"{len(configs)} coordinatewise LSTMs, each the update rule of the parameters whose names the rule gives it",
        "(the first glob that matches the whole name, else the fallback), as in the CIFAR-10 experiment of the paper",
        "(section 3.3):",
        "",
        "| parameter name (glob, whole name) | network |",
        "| --- | --- |",
        *(f"| `{_cell(pattern)}` | `{network}` |" for pattern, network in rule.patterns),
        f"| (any other) | `{rule.fallback}` |",
        "",
        "| setting | " + " | ".join(f"`{network}`" for network in configs) + " |",
        "| --- |" + " --- |" * len(configs),
        *(f"| {key} | " + " | ".join(_cell(config.get(key)) for config in configs.values()) + " |" for key in keys),
        "",
    ]


def build_model_card(
    run_dir: str | Path, repo_id: str, *, revision: str | None = None, files: dict[str, bytes] | None = None
) -> ModelCard:
    """Build the model card of a run folder: front matter, usage, network(s), recipe, evaluation, checksums.

    Args:
        run_dir: a folder written by ``learned-torch-optim train`` (or any ``save_pretrained`` folder, of one
            network or a weight set).
        repo_id: the hub repo the card is for (used in the usage snippet).
        revision: the branch the card is published to, if not ``main``.
        files: the weight files (:func:`weight_files`, read from ``run_dir`` if not given).
    """
    run_dir = Path(run_dir)
    if files is None:
        files = weight_files(run_dir)
    card_data = ModelCardData(library_name="learned_torch_optim", license="mit", tags=list(CARD_TAGS))

    revision_arg = f', revision="{revision}"' if revision else ""
    is_set = SET_FILE in files
    what = "a weight set of coordinatewise LSTMs, one per kind of parameter" if is_set else "coordinatewise LSTM"
    params = "model.named_parameters()" if is_set else "model.parameters()"
    body = [
        f"# {repo_id.split('/')[-1]}: a learned optimizer ({what})",
        "",
        f"Weights for `LearnedOptimizer` of [learned_torch_optim]({REPO_URL}), the coordinatewise LSTM optimizer of",
        f"[*Learning to learn by gradient descent by gradient descent*]({PAPER_URL}) (Andrychowicz et al., 2016).",
        "",
        "## Usage",
        "",
        "```python",
        "# pip install learned-torch-optim",
        "from learned_torch_optim import LearnedOptimizer",
        "",
        f'optimizer = LearnedOptimizer({params}, weights="{repo_id}"{revision_arg})',
        "```",
        "",
        "Pass `revision=` a commit hash to pin these exact weights; with `HF_HUB_OFFLINE=1` they load from the local",
        "hub cache." + (" The parameters' names choose their networks (see below)." if is_set else ""),
        "",
        *_network_markdown(files),
    ]
    readme = run_dir / CARD_FILE
    recipe = extract_recipe(readme.read_text(encoding="utf-8")) if readme.is_file() else None
    body += [recipe if recipe else f"{RECIPE_HEADING}\n\nNot recorded (the run folder has no recipe in README.md).", ""]
    evaluation = evaluation_markdown(run_dir)
    if evaluation:
        body += ["## Evaluation", "", evaluation, ""]
    body += ["## Files", "", "| file | bytes | sha256 |", "| --- | ---: | --- |"]
    body += [f"| {name} | {len(data)} | `{hashlib.sha256(data).hexdigest()}` |" for name, data in files.items()]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def plan_publish(run_dir: str | Path, repo_id: str, *, revision: str | None = None) -> PublishPlan:
    """Check a run folder and build what :func:`publish` uploads; no network access.

    Raises:
        PublishError: ``run_dir`` is not a folder, lacks ``config.json`` or ``model.safetensors`` (and is no weight
            set), or the repo id is not ``org/name``.
        WeightsError: the weight files do not load (bad safetensors, tensors not matching ``config.json``, a
            malformed ``weight_set.json`` or a network's missing file).
    """
    validate_repo_id(repo_id)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PublishError(f"run folder {str(run_dir)!r} does not exist or is not a folder")
    files = weight_files(run_dir)
    card = build_model_card(run_dir, repo_id, revision=revision, files=files)
    files[CARD_FILE] = str(card).encode("utf-8")
    return PublishPlan(run_dir=run_dir, repo_id=repo_id, revision=revision, files=files)


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    dry_run: bool = False,
) -> PublishResult:
    """Upload a run's weight files (one network's ``config.json`` and ``model.safetensors``, or a weight set's
    ``weight_set.json`` and network folders) and a model card ``README.md`` in one hub commit, which also deletes the
    other kind's top-level files (:attr:`PublishPlan.replaced`) where the branch has them.

    Args:
        run_dir: the run folder (``learned-torch-optim train --out``).
        repo_id: ``org/name``; the model repo is created if it does not exist (``private`` then applies).
        private: create the repo private.
        revision: branch to commit to (created from ``main`` if missing); ``main`` by default.
        commit_message: the commit's summary line.
        token: hub token; by default the logged-in one (``hf auth login``) or ``HF_TOKEN``.
        dry_run: build and return the plan only; nothing touches the network.
    """
    plan = plan_publish(run_dir, repo_id, revision=revision)
    if dry_run:
        return PublishResult(plan=plan, commit=None)
    api = HfApi(token=token)
    message = commit_message or f"Upload learned optimizer weights from {plan.run_dir.name}"
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in plan.files.items()
    ]
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        # The hub loader reads config.json before weight_set.json: stale files of the other kind would shadow a set
        # (or sit beside a network) in the repo.
        operations += [
            CommitOperationDelete(path_in_repo=name)
            for name in plan.replaced
            if api.file_exists(repo_id, name, repo_type="model", revision=revision)
        ]
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model", revision=revision)
    except (OSError, ValueError) as error:  # hub HTTP errors, connection errors, offline mode, a refused card
        raise PublishError(f"publishing {plan.run_dir} to hub repo {repo_id!r} failed: {error}") from error
    return PublishResult(plan=plan, commit=commit)
