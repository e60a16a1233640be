"""Resolving, verifying and identifying weights for the update rule.

``resolve_weights`` is the one resolver.  It accepts a :class:`CoordinatewiseLSTM` or :class:`WeightSet` instance, a
path (``os.PathLike``: always a local directory written by ``save_pretrained``), or a string: in order, the name of
a packaged weight set (or ``"default"``), a local directory, or a Hugging Face hub repo id (``org/name``) downloaded
through ``huggingface_hub`` at ``revision``.  What it finds there is one network (``config.json`` and
``model.safetensors``) or a weight set of several (``weight_set.json`` and a folder per network, see
:mod:`learned_torch_optim.weight_set`).  :func:`load_weights` wants one network, :func:`load_weight_set` a set.
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
from .weight_set import MAX_SET_FILE_BYTES, SET_FILE, NetworkRule, WeightSet, WeightSetError

DEFAULT_WEIGHTS = "l2l-general-v6"
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
        if folder.is_dir() and any((folder / name).is_file() for name in ("config.json", SET_FILE)):
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


def _verify_packaged(name: str, folder: Path, file_names: list[str]) -> None:
    sums = _packaged_checksums()
    for file_name in file_names:
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
            "model.safetensors written by CoordinatewiseLSTM.save_pretrained, or a weight set (weight_set.json and "
            "a folder per network, written by WeightSet.save_pretrained)"
        ) from error
    except HfHubHTTPError as error:
        raise WeightsError(f"weights {label}: downloading {file_name} failed: {error}") from error
    except Exception as error:  # connection and protocol errors, size mismatches, malformed repo ids
        raise WeightsError(f"weights {label}: downloading {file_name} failed: {error}") from error


def _hub_file(repo_id: str, file_name: str, commit: str | None, label: str) -> Path:
    """A file of a hub repo at ``commit``, downloaded (or found in the cache) and checked against its checksum."""
    path = _hub_download(repo_id, file_name, commit, label)
    _verify_hub_file(path, label, file_name)
    return Path(path)


def _commit_of(cached: Path, revision: str | None) -> str | None:
    """The commit a top-level file of the hub cache came from: the name of its snapshot folder (``revision`` if it
    is not one)."""
    snapshot = cached.parent.name
    return snapshot if _HEX40.fullmatch(snapshot) else revision


def _load_from_hub(repo_id: str, revision: str | None) -> tuple[CoordinatewiseLSTM | WeightSet, str | None]:
    """Download (or find in the hub cache) and load the weights of a hub repo: one network, or a weight set.

    ``config.json`` is resolved first (where the repo has none, ``weight_set.json``), so that a missing repo,
    revision or file, or an offline miss, is an error here instead of a network built from the default
    configuration.  Every other file is then taken from the one commit that ``revision`` resolved to, checked
    against the hub's checksums and loaded strictly by :meth:`CoordinatewiseLSTM.from_pretrained` (safetensors and
    JSON only, never a pickle).

    Returns:
        ``(weights, commit)``: the commit hash the files came from (``revision`` if it could not be told).
    """
    label = f"hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        config_path = _hub_file(repo_id, "config.json", revision, label)
    except WeightsError as no_config:
        if not isinstance(no_config.__cause__, (RemoteEntryNotFoundError, LocalEntryNotFoundError)):
            raise
        try:
            set_path = _hub_file(repo_id, SET_FILE, revision, label)
        except WeightsError:
            raise no_config from None
        commit = _commit_of(set_path, revision)
        rule = _read_rule(set_path, label)
        folders = {}
        for name in rule.networks:
            for file_name in ("config.json", "model.safetensors"):
                folders[name] = _hub_file(repo_id, f"{name}/{file_name}", commit, label).parent
        return _load_set(folders, rule, label), commit
    commit = _commit_of(config_path, revision)
    weights_path = _hub_file(repo_id, "model.safetensors", commit, label)
    _check_config(config_path, label)
    try:
        # Both files are in the cache at this commit: from_pretrained reads them without another request.
        network = CoordinatewiseLSTM.from_pretrained(repo_id, revision=commit)
    except WeightsError:
        raise
    except Exception as error:  # safetensors, torch (tensors not matching config.json) and the hub raise their own
        raise WeightsError(f"weights {label}: cannot load {weights_path} with config {config_path}: {error}") from error
    return network, commit


def _read_rule(path: Path, label: str) -> NetworkRule:
    """The rule of a ``weight_set.json``, read and checked strictly (its size bounded before it is parsed)."""
    try:
        with open(path, "rb") as handle:  # at most the bound plus one byte, whatever the file is (a FIFO: size 0)
            raw = handle.read(MAX_SET_FILE_BYTES + 1)
        if len(raw) > MAX_SET_FILE_BYTES:
            raise WeightsError(f"weights {label}: {path} is larger than the bound of {MAX_SET_FILE_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"weights {label}: {SET_FILE} ({path}) is not valid JSON: {error}") from error
    try:
        return NetworkRule.from_json(data, f"{SET_FILE} ({path})")
    except WeightSetError as error:
        raise WeightsError(f"weights {label}: {error}") from error


def _load_set(folders: dict[str, Path], rule: NetworkRule, label: str) -> WeightSet:
    """The set of ``rule`` with each network read from its folder (``save_pretrained``'s files)."""
    return WeightSet({name: _load_folder(folders[name], f"{label} (network {name!r})") for name in rule.networks}, rule)


def _load_set_folder(folder: Path, label: str) -> WeightSet:
    rule = _read_rule(folder / SET_FILE, label)
    return _load_set({name: folder / name for name in rule.networks}, rule, label)


def _load_local(folder: Path, label: str) -> CoordinatewiseLSTM | WeightSet:
    """A local folder: a weight set where it holds ``weight_set.json``, else one network."""
    return _load_set_folder(folder, label) if (folder / SET_FILE).is_file() else _load_folder(folder, label)


def _load_packaged(name: str) -> CoordinatewiseLSTM | WeightSet:
    """A packaged weight set, every file checked against ``SHA256SUMS`` before it is read."""
    folder, label = packaged_root() / name, f"packaged {name!r}"
    if not (folder / SET_FILE).is_file():
        _verify_packaged(name, folder, ["config.json", "model.safetensors"])
        return _load_folder(folder, label)
    _verify_packaged(name, folder, [SET_FILE])
    rule = _read_rule(folder / SET_FILE, label)
    _verify_packaged(
        name, folder, [f"{net}/{file}" for net in rule.networks for file in ("config.json", "model.safetensors")]
    )
    return _load_set({net: folder / net for net in rule.networks}, rule, label)


def _packaged_member(name: str, packaged: dict[str, str]) -> CoordinatewiseLSTM | None:
    """``"SET/NETWORK"``: network ``NETWORK`` of the packaged weight set ``SET`` (for one parameter group), else
    ``None``; a packaged set without that network is an error naming the networks it has."""
    set_name, _, network = name.partition("/")
    if set_name not in packaged or not network or not (packaged_root() / set_name / SET_FILE).is_file():
        return None
    weight_set = _load_packaged(set_name)
    if network not in weight_set.networks:
        raise WeightsError(
            f"weights {name!r}: the packaged weight set {set_name!r} has no network {network!r} "
            f"(it has {', '.join(weight_set.networks)})"
        )
    return weight_set.networks[network]


def set_sha256(weight_set: WeightSet) -> str:
    """A hash of a set's rule and networks (each by :func:`weights_sha256`)."""
    digest = hashlib.sha256(json.dumps(weight_set.rule.as_json(), sort_keys=True).encode())
    for name, network in weight_set.networks.items():
        digest.update(f"{name}:{weights_sha256(network)}".encode())
    return digest.hexdigest()


def _identify(weights: CoordinatewiseLSTM | WeightSet, source: str, revision: str | None) -> None:
    """Record ``weights_identity`` on ``weights`` (and on each network of a set, as ``source/name``)."""
    if isinstance(weights, WeightSet):
        for name, network in weights.networks.items():
            known = getattr(network, "weights_identity", None)
            network_source = known.source if known is not None and source == "<instance>" else f"{source}/{name}"
            network.weights_identity = WeightsIdentity(network_source, revision, weights_sha256(network))
        weights.weights_identity = WeightsIdentity(source, revision, set_sha256(weights))
    else:
        weights.weights_identity = WeightsIdentity(source, revision, weights_sha256(weights))


def resolve_weights(
    weights: str | os.PathLike | CoordinatewiseLSTM | WeightSet = "default", revision: str | None = None
) -> CoordinatewiseLSTM | WeightSet:
    """Resolve ``weights`` to a :class:`CoordinatewiseLSTM` or a :class:`WeightSet` and record where it came from.

    Args:
        weights: an instance; a path (``os.PathLike``), always a local ``save_pretrained`` directory; or a string: a
            packaged name (see :func:`list_pretrained`; ``"default"`` is ``"l2l-general-v6"``) even where a local
            directory of that name exists (pass ``"./name"`` or a ``Path`` for that), or ``"SET/NETWORK"``, one
            network of a packaged weight set (for one parameter group), else a local directory, else a hub repo id
            ``org/name``.  A folder or repo holding ``weight_set.json`` is a weight set.
        revision: branch, tag or commit of a hub repo; only meaningful for repo ids.

    The result carries ``weights_identity``, a :class:`WeightsIdentity` (a set's networks each carry their own, with
    the source ``source/name``); for a hub repo its ``revision`` is the commit the files were downloaded at (what
    ``revision`` resolved to).  An instance keeps the source and revision it was loaded with (``"<instance>"`` if
    none); its hash is always that of its current tensors.
    """
    used_revision = None
    resolved: CoordinatewiseLSTM | WeightSet
    if isinstance(weights, (CoordinatewiseLSTM, WeightSet)):
        known = getattr(weights, "weights_identity", None)  # where it was loaded from, if it was
        resolved = weights
        source, used_revision = (known.source, known.revision) if known is not None else ("<instance>", None)
    elif isinstance(weights, os.PathLike):
        folder = Path(weights)
        if not folder.is_dir():
            raise WeightsError(
                f"weights {str(folder)!r}: no such directory (a path always names a local save_pretrained folder; "
                "give a packaged name or a hub repo id as a string)"
            )
        resolved, source = _load_local(folder, repr(str(folder))), str(folder.resolve())
    elif not isinstance(weights, str):
        raise TypeError(
            "weights must be a name, a path, a repo id, a CoordinatewiseLSTM or a WeightSet, got "
            f"{type(weights).__name__}"
        )
    else:
        name = DEFAULT_WEIGHTS if weights == "default" else weights
        packaged = list_pretrained()
        if name in packaged:
            resolved, source = _load_packaged(name), name
        elif (member := _packaged_member(name, packaged)) is not None:
            resolved, source = member, name
        elif weights == "default":
            raise WeightsError(
                f"the default weights, packaged {DEFAULT_WEIGHTS!r}, are missing from {packaged_root()}; the "
                "installation is incomplete, reinstall learned-torch-optim"
            )
        elif Path(weights).is_dir():
            resolved, source = _load_local(Path(weights), repr(weights)), str(Path(weights).resolve())
        elif _looks_like_repo_id(weights):
            try:
                resolved, used_revision = _load_from_hub(weights, revision)
            except WeightsError as error:
                raise WeightsError(f"{error} (nor is there a local directory {weights!r})") from error
            source = weights
        else:
            available = ", ".join(sorted(packaged)) or "none packaged"
            raise WeightsError(
                f"unknown weights {weights!r}: not a packaged name ({available}), a local directory "
                "or a hub repo id of the form 'org/name'"
            )
    _identify(resolved, source, used_revision)
    return resolved


def load_weights(
    weights: str | os.PathLike | CoordinatewiseLSTM = "default", revision: str | None = None
) -> CoordinatewiseLSTM:
    """The one network that ``weights`` names (see :func:`resolve_weights`); a weight set is refused, naming its
    networks."""
    resolved = resolve_weights(weights, revision)
    if isinstance(resolved, WeightSet):
        raise WeightsError(
            f"weights {_describe(weights)} are a weight set of {len(resolved.networks)} networks "
            f"({', '.join(resolved.networks)}), one per kind of parameter: pass them to "
            "LearnedOptimizer(model.named_parameters(), weights=...), or load them with load_weight_set"
        )
    return resolved


def load_weight_set(weights: str | os.PathLike | WeightSet, revision: str | None = None) -> WeightSet:
    """The weight set that ``weights`` names (see :func:`resolve_weights`); one network is refused."""
    resolved = resolve_weights(weights, revision)
    if not isinstance(resolved, WeightSet):
        raise WeightsError(
            f"weights {_describe(weights)} are one network (config.json and model.safetensors), not a weight set "
            f"({SET_FILE} and a folder per network); load them with load_weights"
        )
    return resolved


def _describe(weights: object) -> str:
    return repr(str(weights)) if isinstance(weights, (str, os.PathLike)) else f"<{type(weights).__name__} instance>"
