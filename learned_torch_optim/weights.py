"""Resolving, verifying and identifying weight sets for the update rule.

``load_weights`` is the one resolver.  It accepts a :class:`CoordinatewiseLSTM` instance, a path (``os.PathLike``:
always a local directory written by ``save_pretrained``), or a string: in order, the name of a packaged weight set
(or ``"default"``), a local directory, or a Hugging Face hub repo id (``org/name``) downloaded through
``huggingface_hub`` at ``revision``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from huggingface_hub.errors import RemoteEntryNotFoundError
except ImportError:  # huggingface_hub < 1.0 names the hub's 404-for-a-file error EntryNotFoundError
    from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError

from .network import CoordinatewiseLSTM

DEFAULT_WEIGHTS = "l2l-general"
CHECKSUMS_FILE = "SHA256SUMS"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    """The folder holding the packaged weight sets: ``learned_torch_optim/pretrained`` in an installed wheel,
    ``pretrained/`` at the top of a source checkout (editable installs included)."""
    here = Path(__file__).resolve().parent
    installed = here / "pretrained"
    return installed if installed.is_dir() else here.parent / "pretrained"


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
    digest = hashlib.sha256(json.dumps(network.config, sort_keys=True).encode())
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


def _check_config(config_path: Path, label: str) -> None:
    """Refuse a ``config.json`` that is not a JSON object (read before the hub mixin, which assumes one)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"weights {label}: config.json ({config_path}) is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise WeightsError(
            f"weights {label}: config.json ({config_path}) holds a JSON {type(config).__name__}, not an object of "
            'options ({"hidden_size": ..., ...}) as CoordinatewiseLSTM.save_pretrained writes it'
        )


def _load_folder(folder: Path, label: str) -> CoordinatewiseLSTM:
    for file_name in ("config.json", "model.safetensors"):
        if not (folder / file_name).is_file():
            raise WeightsError(f"weights {label}: {folder / file_name} is missing (expected a save_pretrained folder)")
    _check_config(folder / "config.json", label)
    try:
        return CoordinatewiseLSTM.from_pretrained(folder)
    except Exception as error:  # safetensors, json and torch each raise their own types
        raise WeightsError(f"weights {label}: cannot load {folder}: {error}") from error


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _verify_hub_file(path: str, label: str, file_name: str) -> None:
    """Check a file of the hub cache against the checksum the hub sent for it (its ETag names the blob).

    In the hub cache a snapshot file is a link to ``blobs/<etag>``: the sha256 of the content for LFS files, the git
    blob sha1 for the others.  Where the cache holds copies instead of links (no symlink support) there is nothing
    to compare with and the check is skipped.
    """
    if not os.path.islink(path):
        return
    # One level only: blobs/<etag> may itself link into a shared store named by another hash.
    blob = Path(path).parent / os.readlink(path)
    etag = blob.name.lower()
    data = Path(path).read_bytes()
    if _HEX64.fullmatch(etag):
        actual = hashlib.sha256(data).hexdigest()
    elif _HEX40.fullmatch(etag):
        actual = _git_blob_sha1(data)
    else:
        return
    if actual != etag:
        raise WeightsError(
            f"weights {label}: the cached {file_name} ({blob}) does not match the checksum the hub sent for it "
            f"({etag}); the cache is corrupt. Delete {blob} (or the whole folder {blob.parent.parent}) and load "
            "again to download it afresh"
        )


def _hub_download(repo_id: str, file_name: str, revision: str | None, label: str) -> str:
    """Download ``file_name`` of a hub repo into the hub cache (or find it there); hub errors become WeightsError."""
    try:
        return hf_hub_download(repo_id=repo_id, filename=file_name, revision=revision)
    except LocalEntryNotFoundError as error:
        if constants.is_offline_mode():
            why = "offline mode is on (HF_HUB_OFFLINE=1)"
        else:
            cause = str(error.__cause__ or "").strip().splitlines()
            why = f"the hub at {constants.ENDPOINT} could not be reached" + (f" ({cause[0]})" if cause else "")
        raise WeightsError(
            f"weights {label}: {file_name} is not in the local hub cache ({constants.HF_HUB_CACHE}) and {why}. "
            f"Download the weights once while online (they are then cached), or pass a local directory instead: "
            f"weights='path/to/folder' holding config.json and model.safetensors (e.g. from "
            f"`hf download {repo_id} --local-dir path/to/folder` or CoordinatewiseLSTM.save_pretrained)"
        ) from error
    except GatedRepoError as error:
        raise WeightsError(
            f"weights {label}: the repo is gated; accept its conditions on the hub and log in (`hf auth login` or "
            "HF_TOKEN)"
        ) from error
    except RepositoryNotFoundError as error:
        raise WeightsError(
            f"weights {label}: repository not found on the hub at {constants.ENDPOINT} (it does not exist, or it is "
            "private and no valid token was given: log in with `hf auth login` or set HF_TOKEN)"
        ) from error
    except RevisionNotFoundError as error:
        raise WeightsError(f"weights {label}: the repo has no revision {revision!r} (branch, tag or commit)") from error
    except RemoteEntryNotFoundError as error:
        raise WeightsError(
            f"weights {label}: the repo has no {file_name}; learned_torch_optim weights are a config.json and a "
            "model.safetensors written by CoordinatewiseLSTM.save_pretrained"
        ) from error
    except HfHubHTTPError as error:
        raise WeightsError(f"weights {label}: downloading {file_name} failed: {error}") from error
    except Exception as error:  # connection and protocol errors, size mismatches, malformed repo ids
        raise WeightsError(f"weights {label}: downloading {file_name} failed: {error}") from error


def _load_from_hub(repo_id: str, revision: str | None) -> tuple[CoordinatewiseLSTM, str | None]:
    """Download (or find in the hub cache) and load the weights of a hub repo.

    ``config.json`` is resolved first, so that a missing repo, revision or file, or an offline miss, is an error
    here instead of a network built from the default configuration.  Both files are then taken from the one commit
    that ``revision`` resolved to, checked against the hub's checksums and loaded strictly by
    :meth:`CoordinatewiseLSTM.from_pretrained`.

    Returns:
        ``(network, commit)``: the commit hash the files came from (``revision`` if it could not be told).
    """
    label = f"hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    config_path = _hub_download(repo_id, "config.json", revision, label)
    snapshot = Path(config_path).parent.name
    commit = snapshot if _HEX40.fullmatch(snapshot) else revision
    weights_path = _hub_download(repo_id, "model.safetensors", commit, label)
    _verify_hub_file(config_path, label, "config.json")
    _verify_hub_file(weights_path, label, "model.safetensors")
    _check_config(Path(config_path), label)
    try:
        # Both files are in the cache at this commit: from_pretrained reads them without another request.
        network = CoordinatewiseLSTM.from_pretrained(repo_id, revision=commit)
    except WeightsError:
        raise
    except Exception as error:  # safetensors, torch (tensors not matching config.json) and the hub raise their own
        raise WeightsError(f"weights {label}: cannot load {weights_path} with config {config_path}: {error}") from error
    return network, commit


def load_weights(
    weights: str | os.PathLike | CoordinatewiseLSTM = "default", revision: str | None = None
) -> CoordinatewiseLSTM:
    """Resolve ``weights`` to a :class:`CoordinatewiseLSTM` and record where it came from.

    Args:
        weights: a network instance; a path (``os.PathLike``), always a local ``save_pretrained`` directory; or a
            string: a packaged name (see :func:`list_pretrained`; ``"default"`` is ``"l2l-general"``) even where a
            local directory of that name exists (pass ``"./name"`` or a ``Path`` for that), else a local directory,
            else a hub repo id ``org/name``.
        revision: branch, tag or commit of a hub repo; only meaningful for repo ids.

    The returned network carries ``weights_identity``, a :class:`WeightsIdentity`; for a hub repo its ``revision``
    is the commit the files were downloaded at (what ``revision`` resolved to).  An instance keeps the source and
    revision it was loaded with (``"<instance>"`` if none); its hash is always that of its current tensors.
    """
    used_revision = None
    if isinstance(weights, CoordinatewiseLSTM):
        known = getattr(weights, "weights_identity", None)  # where it was loaded from, if it was
        network = weights
        source, used_revision = (known.source, known.revision) if known is not None else ("<instance>", None)
    elif isinstance(weights, os.PathLike):
        folder = Path(weights)
        if not folder.is_dir():
            raise WeightsError(
                f"weights {str(folder)!r}: no such directory (a path always names a local save_pretrained folder; "
                "give a packaged name or a hub repo id as a string)"
            )
        network, source = _load_folder(folder, repr(str(folder))), str(folder.resolve())
    elif not isinstance(weights, str):
        raise TypeError(
            f"weights must be a name, a path, a repo id or a CoordinatewiseLSTM, got {type(weights).__name__}"
        )
    else:
        name = DEFAULT_WEIGHTS if weights == "default" else weights
        packaged = list_pretrained()
        if name in packaged:
            folder = packaged_root() / name
            _verify_packaged(name, folder)
            network, source = _load_folder(folder, f"packaged {name!r}"), name
        elif weights == "default":
            raise WeightsError(
                f"the default weights, packaged {DEFAULT_WEIGHTS!r}, are missing from {packaged_root()}; the "
                "installation is incomplete, reinstall learned-torch-optim"
            )
        elif Path(weights).is_dir():
            network, source = _load_folder(Path(weights), repr(weights)), str(Path(weights).resolve())
        elif _looks_like_repo_id(weights):
            try:
                network, used_revision = _load_from_hub(weights, revision)
            except WeightsError as error:
                raise WeightsError(f"{error} (nor is there a local directory {weights!r})") from error
            source = weights
        else:
            available = ", ".join(sorted(packaged)) or "none packaged"
            raise WeightsError(
                f"unknown weights {weights!r}: not a packaged name ({available}), a local directory "
                "or a hub repo id of the form 'org/name'"
            )
    network.weights_identity = WeightsIdentity(source, used_revision, weights_sha256(network))
    return network
