"""Resolving, verifying and identifying weight sets for the update rule.

``load_weights`` is the one resolver.  In order, it accepts a :class:`CoordinatewiseLSTM` instance, a local
directory written by ``save_pretrained``, the name of a packaged weight set, or a Hugging Face hub repo id
(``org/name``) downloaded through ``huggingface_hub`` at ``revision``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .network import CoordinatewiseLSTM

DEFAULT_WEIGHTS = "l2l-paper-mnist"
CHECKSUMS_FILE = "SHA256SUMS"


class WeightsError(ValueError):
    """Weights that cannot be found, read or trusted; the message names them."""


@dataclass(frozen=True)
class WeightsIdentity:
    """Which weights a network holds: where they came from and a hash of their content."""

    source: str
    revision: str | None
    sha256: str

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def packaged_root() -> Path:
    """The folder holding the packaged weight sets (``pretrained/`` in the source tree and in the wheel)."""
    try:
        return Path(str(resources.files("learned_torch_optim.pretrained")))
    except ModuleNotFoundError:  # running from a source checkout that is not installed
        return Path(__file__).resolve().parent.parent / "pretrained"


def _packaged_checksums() -> dict[str, str]:
    sums_file = packaged_root() / CHECKSUMS_FILE
    if not sums_file.is_file():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def list_pretrained() -> dict[str, str]:
    """The packaged weight sets: ``{name: one-line description}``; ``"default"`` names one of them."""
    found: dict[str, str] = {}
    if not packaged_root().is_dir():
        return found
    for folder in sorted(packaged_root().iterdir()):
        config_file = folder / "config.json"
        if folder.is_dir() and config_file.is_file():
            description_file = folder / "DESCRIPTION"
            found[folder.name] = description_file.read_text().strip() if description_file.is_file() else ""
    return found


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_sha256(network: CoordinatewiseLSTM) -> str:
    """A hash of a network's config and tensors, the same for equal weights wherever they came from."""
    digest = hashlib.sha256(json.dumps(network._hub_mixin_config or {}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _verify_packaged(name: str, folder: Path) -> None:
    sums = _packaged_checksums()
    for file_name in ("config.json", "model.safetensors"):
        relative = f"{name}/{file_name}"
        expected = sums.get(relative)
        if expected is None:
            raise WeightsError(f"packaged weights {name!r}: {relative} is not listed in {CHECKSUMS_FILE}")
        if file_sha256(folder / file_name) != expected:
            raise WeightsError(
                f"packaged weights {name!r}: {folder / file_name} does not match its sha256 in {CHECKSUMS_FILE}; "
                "the installation is corrupt, reinstall learned-torch-optim"
            )


def _load_folder(folder: Path, label: str) -> CoordinatewiseLSTM:
    for file_name in ("config.json", "model.safetensors"):
        if not (folder / file_name).is_file():
            raise WeightsError(f"weights {label}: {folder / file_name} is missing (expected a save_pretrained folder)")
    try:
        return CoordinatewiseLSTM.from_pretrained(folder)
    except Exception as error:  # safetensors, json and torch each raise their own types
        raise WeightsError(f"weights {label}: cannot load {folder}: {error}") from error


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _load_from_hub(repo_id: str, revision: str | None) -> CoordinatewiseLSTM:
    label = f"hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return CoordinatewiseLSTM.from_pretrained(repo_id, revision=revision)
    except LocalEntryNotFoundError as error:
        raise WeightsError(
            f"weights {label} are not in the local hub cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}); download them once while online, or pass "
            f"weights=<a local folder written by save_pretrained>"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise WeightsError(f"weights {label}: not found on the hub ({type(error).__name__})") from error
    except HfHubHTTPError as error:
        raise WeightsError(f"weights {label}: download failed: {error}") from error
    except Exception as error:
        raise WeightsError(f"weights {label}: cannot load: {error}") from error


def load_weights(
    weights: str | os.PathLike | CoordinatewiseLSTM = "default", revision: str | None = None
) -> CoordinatewiseLSTM:
    """Resolve ``weights`` to a :class:`CoordinatewiseLSTM` and record where it came from.

    Args:
        weights: a network instance, a local ``save_pretrained`` directory, a packaged name (see
            :func:`list_pretrained`; ``"default"`` is ``"l2l-paper-mnist"``), or a hub repo id ``org/name``.
        revision: branch, tag or commit of a hub repo; only meaningful for repo ids.

    The returned network carries ``weights_identity``, a :class:`WeightsIdentity`.
    """
    if isinstance(weights, CoordinatewiseLSTM):
        network, source, used_revision = weights, "<instance>", None
    elif not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be a name, a path, a repo id or a CoordinatewiseLSTM, got {type(weights).__name__}"
        )
    else:
        text = os.fspath(weights)
        name = DEFAULT_WEIGHTS if text == "default" else text
        packaged = packaged_root() / name
        used_revision = None
        if Path(text).is_dir():
            network, source = _load_folder(Path(text), repr(text)), str(Path(text).resolve())
        elif "/" not in name and (packaged / "config.json").is_file():
            _verify_packaged(name, packaged)
            network, source = _load_folder(packaged, f"packaged {name!r}"), name
        elif _looks_like_repo_id(text):
            network, source, used_revision = _load_from_hub(text, revision), text, revision
        else:
            available = ", ".join(sorted(list_pretrained())) or "none packaged"
            raise WeightsError(
                f"unknown weights {text!r}: not a local directory, a packaged name ({available}) "
                "or a hub repo id of the form 'org/name'"
            )
    network.weights_identity = WeightsIdentity(source, used_revision, weights_sha256(network))
    return network
