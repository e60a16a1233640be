"""Hub weights: download by repo id at a pinned revision, offline use, integrity errors, publishing.

Everything runs against a loopback hub: a ``http.server`` on 127.0.0.1 inside the test process, speaking enough of
the Hugging Face hub protocol for the real ``huggingface_hub`` client (file resolve ``HEAD``/``GET``, repo and
branch creation, preupload, NDJSON commits).  A guard refuses every connection that is not to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from huggingface_hub import constants

from learned_torch_optim import (
    CoordinatewiseLSTM,
    LearnedOptimizer,
    NetworkRule,
    WeightsError,
    WeightSet,
    load_weight_set,
    load_weights,
)
from learned_torch_optim.meta import ModuleTask
from learned_torch_optim.meta.cli import main
from learned_torch_optim.meta.evaluation import evaluate, format_results_markdown
from learned_torch_optim.meta.publish import PublishError, plan_publish, publish
from learned_torch_optim.weights import WeightsIdentity

# ----------------------------------------------------------------------------------------------- loopback hub


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LoopbackHub:
    """An in-memory hub: repos with branches and commits, served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"refs": {branch: sha}, "commits": {sha: {path: bytes}}}
        self.commit_ops: dict[str, list[str]] = {}  # commit sha -> paths the commit request added
        self.commit_deletions: dict[str, list[str]] = {}  # commit sha -> paths the commit request deleted
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization header)
        self._counter = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_commit(
        self, repo_id: str, files: dict[str, bytes], branch: str = "main", deleted: tuple[str, ...] = ()
    ) -> str:
        """Commit ``files`` (on top of the branch's files, less ``deleted``) and move the branch; returns the sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
            parent = repo["refs"].get(branch) or repo["refs"].get("main")
            content = dict(repo["commits"][parent]) if parent else {}
            for path in deleted:
                del content[path]  # KeyError: deleting a file the branch does not have fails the request
            content.update(files)
            self._counter += 1
            sha = hashlib.sha1(f"{repo_id}:{self._counter}:{sorted(files)}".encode()).hexdigest()
            repo["commits"][sha] = content
            repo["refs"][branch] = sha
            return sha

    def resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos[repo_id]
        if revision in repo["refs"]:
            return repo["refs"][revision]
        return revision if revision in repo["commits"] else None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["commits"][self.resolve(repo_id, revision)]


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        # -- plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **(headers or {})}
            headers.setdefault("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), headers)

        def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
            extra = {"X-Error-Message": message, **(headers or {})}
            if code:
                extra["X-Error-Code"] = code
            self._json(status, {"error": message}, extra)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _record(self) -> list[str]:
            hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
            return [unquote(part) for part in urlsplit(self.path).path.split("/")[1:]]

        # -- file resolve: HEAD/GET /{org}/{name}/resolve/{revision}/{filename}
        def do_HEAD(self) -> None:
            self._resolve(self._record())

        def do_GET(self) -> None:
            self._resolve(self._record())

        def _resolve(self, parts: list[str]) -> None:
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, None, "Not found")
            repo_id, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            if repo_id not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            sha = hub.resolve(repo_id, revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            content = hub.repos[repo_id]["commits"][sha]
            if filename not in content:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
            data = content[filename]
            headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
            if filename.endswith(".safetensors"):  # stored as LFS: the etag is the content's sha256
                digest = hashlib.sha256(data).hexdigest()
                headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data))})
            else:  # a regular git file: the etag is its git blob sha1
                headers["ETag"] = f'"{_git_blob_sha1(data)}"'
            self._send(200, data, headers)

        # -- API
        def do_POST(self) -> None:
            parts = self._record()
            body = self._body()
            if parts == ["api", "validate-yaml"]:
                return self._json(200, {"errors": [], "warnings": []})
            if parts == ["api", "repos", "create"]:
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                if repo_id in hub.repos:  # the client reads the repo url from the 409 body too
                    conflict = {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                    return self._json(409, conflict)
                hub.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
                hub.repos[repo_id]["private"] = payload.get("visibility") == "private"
                return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if len(parts) == 6 and parts[:2] == ["api", "models"]:
                repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if action == "branch":
                    if revision in hub.repos[repo_id]["refs"]:
                        return self._error(409, None, "Branch already exists")
                    start = json.loads(body or b"{}").get("startingPoint", "main")
                    hub.repos[repo_id]["refs"][revision] = hub.resolve(repo_id, start)
                    return self._json(200, {})
                if action == "preupload":  # every file inline ("regular"): no LFS or Xet upload
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json(200, {"files": modes})
                if action == "commit":
                    return self._commit(repo_id, revision, body)
            return self._error(404, None, f"loopback hub does not serve POST {self.path}")

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            if hub.resolve(repo_id, revision) is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            files, deleted = {}, []
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    assert item["value"]["encoding"] == "base64"
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    deleted.append(item["value"]["path"])
                elif item["key"] != "header":
                    return self._error(400, None, f"loopback hub accepts inline files only, got {item['key']}")
            sha = hub.add_commit(repo_id, files, branch=revision, deleted=tuple(deleted))
            hub.commit_ops[sha], hub.commit_deletions[sha] = list(files), deleted
            self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})

    return Handler


# ----------------------------------------------------------------------------------------------- fixtures

_real_connect = socket.socket.connect


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse every connection that is not to 127.0.0.1: no test may reach a real hub."""

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"test_hub: connection to {address} refused (loopback only)")
        return _real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """A fresh HF home and hub cache, no token, online mode; the variables also reach subprocesses."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return home


def _point_client_at(endpoint: str, monkeypatch) -> None:
    # huggingface_hub reads HF_ENDPOINT once, at import, into these two constants; HfApi() reads ENDPOINT when made.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(hf_home, monkeypatch):
    server = LoopbackHub()
    _point_client_at(server.url, monkeypatch)
    yield server
    server.stop()


def _weights_folder(folder: Path, seed: int, **config) -> Path:
    torch.manual_seed(seed)
    CoordinatewiseLSTM(**config).save_pretrained(folder)
    return folder


def _weight_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


def _trajectory(weights, revision: str | None = None, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(3, 5))
    target = torch.randn(3, 5)
    optimizer = LearnedOptimizer([param], weights=weights, revision=revision)
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        ((param - target) ** 2).sum().backward()
        optimizer.step()
        trajectory.append(param.detach().clone())
    return trajectory


# ----------------------------------------------------------------------------------------------- downloading


def test_repo_id_at_pinned_revision_runs_exactly_as_the_local_folder(hub, tmp_path):
    pinned = _weights_folder(tmp_path / "pinned", seed=7)
    later = _weights_folder(tmp_path / "later", seed=8)
    sha = hub.add_commit("org/l2l", _weight_files(pinned))
    hub.add_commit("org/l2l", _weight_files(later))  # main moves on; the pinned commit must not

    from_hub = _trajectory("org/l2l", revision=sha)
    from_folder = _trajectory(str(pinned))
    assert all(torch.equal(a, b) for a, b in zip(from_hub, from_folder))

    seen = len(hub.requests)
    network = load_weights("org/l2l", revision=sha)  # a cached commit: no request at all
    assert len(hub.requests) == seen
    assert network.weights_identity.source == "org/l2l"
    assert network.weights_identity.revision == sha
    assert network.weights_identity.sha256 == load_weights(pinned).weights_identity.sha256

    hub.repos["org/l2l"]["refs"]["v1"] = sha  # a tag: recorded as the commit it names
    assert load_weights("org/l2l", revision="v1").weights_identity == network.weights_identity

    latest = load_weights("org/l2l")  # main: the later weights, recorded at the commit main pointed to
    assert latest.weights_identity.revision == hub.resolve("org/l2l", "main")
    assert latest.weights_identity.sha256 == load_weights(later).weights_identity.sha256
    assert all(method in ("HEAD", "GET") for method, _, _ in hub.requests)


def test_parameter_groups_load_their_own_hub_ids_and_revisions(hub, tmp_path):
    conv = _weights_folder(tmp_path / "conv", seed=3, hidden_size=6)
    fc = _weights_folder(tmp_path / "fc", seed=4, hidden_size=5, num_layers=1)
    conv_sha = hub.add_commit("org/conv-lstm", _weight_files(conv))
    hub.add_commit("org/conv-lstm", _weight_files(fc))  # main moves on; the pinned group must not
    hub.add_commit("org/fc-lstm", _weight_files(fc))
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))]
    optimizer = LearnedOptimizer(
        [{"params": params[:1], "weights": "org/conv-lstm", "revision": conv_sha}, {"params": params[1:]}],
        weights="org/fc-lstm",
    )
    conv_identity, fc_identity = (network.weights_identity for network in optimizer.group_networks)
    assert (conv_identity.source, conv_identity.revision) == ("org/conv-lstm", conv_sha)
    assert conv_identity.sha256 == load_weights(conv).weights_identity.sha256
    assert fc_identity.source == "org/fc-lstm" and fc_identity.sha256 == load_weights(fc).weights_identity.sha256
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert [optimizer.state[p]["lstm_state"].shape[-1] for p in params] == [4 * 6, 2 * 5]


def test_cached_weights_load_offline_in_another_process(hub, hf_home, tmp_path, monkeypatch):
    folder = _weights_folder(tmp_path / "w", seed=3)
    sha = hub.add_commit("org/l2l", _weight_files(folder))
    online = load_weights("org/l2l", revision=sha).weights_identity
    load_weights("org/l2l")  # resolving the branch once online records refs/main in the cache
    hub.stop()  # nothing serves now: the cache alone must do
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # discard port: a request would fail, not reach anything real
        "OMP_NUM_THREADS": "1",
    }
    script = textwrap.dedent(
        f"""
        import json, torch
        from learned_torch_optim import LearnedOptimizer, load_weights
        params = [torch.nn.Parameter(torch.zeros(2))]
        pinned = LearnedOptimizer(params, weights="org/l2l", revision="{sha}").network.weights_identity
        branch = load_weights("org/l2l").weights_identity  # main, resolved through the cached ref
        print(json.dumps([pinned.as_dict(), branch.as_dict()]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pinned, branch = json.loads(result.stdout.strip().splitlines()[-1])
    assert pinned == online.as_dict()
    assert branch == online.as_dict()


def test_offline_in_process_uses_the_cache_without_requests(hub, tmp_path, monkeypatch):
    folder = _weights_folder(tmp_path / "w", seed=3)
    hub.add_commit("org/l2l", _weight_files(folder))
    expected = load_weights("org/l2l").weights_identity
    seen = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_weights("org/l2l").weights_identity == expected
    assert len(hub.requests) == seen


def test_offline_and_not_cached_names_the_repo_and_the_local_folder_way(hub, monkeypatch):
    hub.add_commit("org/never-downloaded", {"config.json": b"{}"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"org/never-downloaded.*not in the local hub cache") as info:
        load_weights("org/never-downloaded", revision="v1")
    assert "HF_HUB_OFFLINE" in str(info.value) and "local directory" in str(info.value)
    assert hub.requests == []


def test_a_weight_set_repo_loads_at_one_commit_by_its_id_and_offline_from_the_cache(hub, tmp_path, monkeypatch):
    torch.manual_seed(5)
    rule = NetworkRule((("conv.weight", "conv"),), "fc")
    weight_set = WeightSet({"conv": CoordinatewiseLSTM(hidden_size=6), "fc": CoordinatewiseLSTM(hidden_size=4)}, rule)
    weight_set.save_pretrained(tmp_path / "set")
    files = {
        path.relative_to(tmp_path / "set").as_posix(): path.read_bytes()
        for path in (tmp_path / "set").rglob("*")
        if path.is_file() and path.name != "README.md"
    }
    sha = hub.add_commit("org/l2l-cifar", files)
    hub.add_commit("org/l2l-cifar", {"fc/model.safetensors": b"moved on"})  # main moves on; the pin must not

    loaded = load_weight_set("org/l2l-cifar", revision=sha)
    assert loaded.weights_identity.revision == sha and loaded.rule == rule
    assert loaded.weights_identity.sha256 == load_weight_set(tmp_path / "set").weights_identity.sha256
    assert loaded.networks["fc"].weights_identity.source == "org/l2l-cifar/fc"
    model = torch.nn.Module()
    model.conv, model.fc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizer = LearnedOptimizer(model.named_parameters(), weights="org/l2l-cifar", revision=sha)
    assert [g["param_names"] for g in optimizer.param_groups] == [
        ["conv.weight"],
        ["conv.bias", "fc.weight", "fc.bias"],
    ]
    with pytest.raises(WeightsError, match="network 'fc'.*cannot load"):  # the moved-on head is checked like any file
        load_weight_set("org/l2l-cifar")

    seen = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_weight_set("org/l2l-cifar", revision=sha).weights_identity == loaded.weights_identity
    assert len(hub.requests) == seen
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.add_commit("org/neither", {"README.md": b"no weights"})
    with pytest.raises(WeightsError, match="has no config.json.*or a weight set"):
        load_weights("org/neither")


# ----------------------------------------------------------------------------------------------- integrity


def test_corrupt_or_mismatched_files_and_missing_repos_are_weights_errors(hub, tmp_path):
    folder = _weights_folder(tmp_path / "w", seed=1)
    hub.add_commit(
        "org/corrupt", {"config.json": (folder / "config.json").read_bytes(), "model.safetensors": b"x" * 64}
    )
    with pytest.raises(WeightsError, match=r"org/corrupt.*cannot load"):
        load_weights("org/corrupt")

    mismatched = _weight_files(folder)
    mismatched["config.json"] = json.dumps({"hidden_size": 8, "num_layers": 2}).encode()
    hub.add_commit("org/mismatch", mismatched)
    with pytest.raises(WeightsError, match=r"org/mismatch.*cannot load"):
        load_weights("org/mismatch")

    hub.add_commit("org/bad-json", {**_weight_files(folder), "config.json": b"{not json"})
    with pytest.raises(WeightsError, match=r"org/bad-json.*not valid JSON"):
        load_weights("org/bad-json")

    with pytest.raises(WeightsError, match=r"org/missing.*repository not found"):
        load_weights("org/missing")
    with pytest.raises(WeightsError, match=r"org/mismatch.*no revision 'nope'"):
        load_weights("org/mismatch", revision="nope")
    hub.add_commit("org/no-config", {"model.safetensors": (folder / "model.safetensors").read_bytes()})
    with pytest.raises(WeightsError, match=r"org/no-config.*no config.json"):  # never a default-config network
        load_weights("org/no-config")


def test_hostile_configs_in_a_hub_repo_are_refused_before_building_the_network(hub, tmp_path, monkeypatch):
    """A hub repo cannot make a user allocate a network its files do not hold, nor load as all defaults."""
    files = _weight_files(_weights_folder(tmp_path / "w", seed=1))
    config = json.loads(files["config.json"])
    hub.add_commit("org/huge", {**files, "config.json": json.dumps({**config, "hidden_size": 2000}).encode()})
    hub.add_commit("org/list", {**files, "config.json": b"[20, 2]"})
    hub.add_commit("org/empty", {**files, "config.json": b"{}"})
    nan_scale = json.dumps({**config, "output_scale": float("nan")}).encode()
    hub.add_commit("org/nan-scale", {**files, "config.json": nan_scale})
    built = []
    monkeypatch.setattr(torch.nn.LSTMCell, "reset_parameters", lambda cell: built.append(cell.weight_hh.device))
    with pytest.raises(WeightsError, match=r"org/huge.*cannot load.*does not hold the tensors"):
        load_weights("org/huge")
    assert all(device.type == "meta" for device in built)
    with pytest.raises(WeightsError, match=r"org/list.*config.json .* holds a JSON list, not an object"):
        load_weights("org/list")
    with pytest.raises(WeightsError, match=r"org/empty.*config.json of org/empty does not state hidden_size"):
        load_weights("org/empty")
    with pytest.raises(WeightsError, match=r"org/nan-scale.*output_scale must be a finite positive number"):
        load_weights("org/nan-scale")


def test_a_tampered_cache_file_fails_its_hub_checksum(hub, tmp_path):
    folder = _weights_folder(tmp_path / "w", seed=1)
    sha = hub.add_commit("org/l2l", _weight_files(folder))
    path = Path(
        constants.HF_HUB_CACHE, "models--org--l2l", "snapshots", sha, "model.safetensors"
    )  # the snapshot link into blobs/
    load_weights("org/l2l", revision=sha)
    if not path.is_symlink():
        pytest.skip("this file system has no symlinks: the hub cache holds copies, nothing to check against")
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"org/l2l.*model.safetensors.*does not match the checksum"):
        load_weights("org/l2l", revision=sha)


# ----------------------------------------------------------------------------------------------- publishing

RECIPE = """## Meta-training recipe

Trained with `learned_torch_optim.meta` (package version 0.1.0).

| setting | value |
| --- | --- |
| task | `quadratic` (quadratic) |
| horizon (optimizee steps per problem) | 20 |
"""


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as `train` leaves it: weights, a README with the recipe, a checkpoint and a metrics log."""
    run = _weights_folder(tmp_path / "run", seed=5)
    (run / "README.md").write_text(f"---\nlicense: mit\n---\n\n# Learned optimizer\n\n{RECIPE}")
    (run / "checkpoint.pt").write_bytes(b"not uploaded")
    (run / "metrics.jsonl").write_text('{"iteration": 1}\n')
    evaluate(
        run, "quadratic", problems=2, steps=5, optimizers=("adam",), lr_grid=(0.01,), cache=False, progress=False
    ).save(run)
    return run


def test_publish_uploads_weights_and_a_model_card(hub, run_dir, monkeypatch):
    result = publish(run_dir, "org/published", token="hf_test_token")
    sha = result.commit.oid
    assert hub.commit_ops[sha] == ["config.json", "model.safetensors", "README.md"]
    uploaded = hub.files("org/published", sha)
    assert uploaded["model.safetensors"] == (run_dir / "model.safetensors").read_bytes()
    assert uploaded["config.json"] == (run_dir / "config.json").read_bytes()
    card = uploaded["README.md"].decode()
    assert card.startswith("---\n") and "library_name: learned_torch_optim" in card and "license: mit" in card
    assert "- learned-optimizer" in card.split("---")[1]
    assert RECIPE.strip() in card
    assert format_results_markdown(json.loads((run_dir / "results.json").read_text())).strip() in card
    assert 'weights="org/published"' in card
    assert hashlib.sha256(uploaded["model.safetensors"]).hexdigest() in card
    assert {auth for method, _, auth in hub.requests if method == "POST"} == {"Bearer hf_test_token"}

    # what was published loads back, bit for bit
    network = load_weights("org/published", revision=sha)
    assert network.weights_identity.sha256 == load_weights(run_dir).weights_identity.sha256

    # publishing again (repo exists) to a new branch through the command line
    monkeypatch.setenv("HF_TOKEN", "hf_cli_token")
    code = main(["publish", str(run_dir), "--repo-id", "org/published", "--revision", "exp", "--commit-message", "m"])
    assert code == 0
    assert hub.requests[-1][2] == "Bearer hf_cli_token"
    branch_sha = hub.resolve("org/published", "exp")
    assert branch_sha != sha and hub.commit_ops[branch_sha] == ["config.json", "model.safetensors", "README.md"]
    assert 'revision="exp"' in hub.files("org/published", "exp")["README.md"].decode()
    assert load_weights("org/published", revision="exp").weights_identity.revision == branch_sha


def test_publish_dry_run_lists_the_files_and_touches_no_network(hf_home, run_dir, monkeypatch, capsys):
    _point_client_at("http://127.0.0.1:9", monkeypatch)

    def no_connection(sock, address):
        raise AssertionError(f"dry run connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_connection)
    assert main(["publish", str(run_dir), "--repo-id", "org/name", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing = out.split("--- README.md ---")[0]
    for name in ("config.json", "model.safetensors", "README.md"):
        assert name in listing
    size = f"{(run_dir / 'model.safetensors').stat().st_size:,} bytes"
    assert size in listing and "checkpoint.pt" not in listing and "metrics.jsonl" not in listing
    assert "library_name: learned_torch_optim" in out and "## Meta-training recipe" in out
    assert "nothing uploaded" in out


def test_publish_validates_the_run_folder_and_the_repo_id(hf_home, run_dir, tmp_path, capsys):
    assert main(["publish", str(run_dir), "--repo-id", "no-slash", "--dry-run"]) == 2
    assert "'no-slash'" in capsys.readouterr().err
    (run_dir / "results.json").unlink()
    (run_dir / "model.safetensors").unlink()
    assert main(["publish", str(run_dir), "--repo-id", "org/name", "--dry-run"]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err
    with pytest.raises(PublishError, match="does not exist"):
        publish(tmp_path / "nowhere", "org/name", dry_run=True)
    broken = _weights_folder(tmp_path / "broken", seed=0)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="broken"):
        publish(broken, "org/name", dry_run=True)


def test_publish_refuses_an_evaluation_of_other_weights(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    results["weights_sha256"] = "0" * 64
    (run_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(PublishError, match="not the weights in"):
        plan_publish(run_dir, "org/other")


def _set_model() -> torch.nn.Module:
    return torch.nn.Sequential(OrderedDict(conv=torch.nn.Linear(3, 2), fc=torch.nn.Linear(2, 1)))


def _set_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3, generator=generator), torch.randn(4, 1, generator=generator)


def test_publish_uploads_a_weight_set_as_one_repo_that_loads_back(hub, tmp_path, capsys):
    torch.manual_seed(5)
    rule = NetworkRule((("conv.weight", "conv"),), "fc")
    networks = {"conv": CoordinatewiseLSTM(hidden_size=6), "fc": CoordinatewiseLSTM(hidden_size=4, num_layers=1)}
    run = tmp_path / "set-run"
    WeightSet(networks, rule).save_pretrained(run, model_card_kwargs={"recipe": RECIPE})
    (run / "checkpoint.pt").write_bytes(b"not uploaded")
    task = ModuleTask("tiny", lambda generator: _set_model(), torch.nn.functional.mse_loss, _set_batch)
    evaluate(run, task, problems=1, steps=3, optimizers=("adam",), lr_grid=(0.01,), progress=False).save(run)
    hub.add_commit("org/l2l-set", _weight_files(_weights_folder(tmp_path / "one", seed=1)))  # a network before it

    result = publish(run, "org/l2l-set", token="hf_test_token")
    sha = result.commit.oid
    names = ["weight_set.json", *(f"{n}/{f}" for n in ("conv", "fc") for f in ("config.json", "model.safetensors"))]
    assert hub.commit_ops[sha] == [*names, "README.md"]
    assert hub.commit_deletions[sha] == ["config.json", "model.safetensors"]  # they would shadow the set
    uploaded = hub.files("org/l2l-set", sha)
    assert all(uploaded[name] == (run / name).read_bytes() for name in names)
    card = uploaded["README.md"].decode()
    assert "library_name: learned_torch_optim" in card and RECIPE.strip() in card
    assert 'LearnedOptimizer(model.named_parameters(), weights="org/l2l-set")' in card
    assert "| `conv.weight` | `conv` |" in card and "| (any other) | `fc` |" in card
    assert "| hidden_size | 6 | 4 |" in card and "## Evaluation" in card
    assert hashlib.sha256(uploaded["conv/model.safetensors"]).hexdigest() in card

    model = _set_model()
    optimizer = LearnedOptimizer(model.named_parameters(), weights="org/l2l-set", revision=sha)
    assert [g["param_names"] for g in optimizer.param_groups] == [
        ["conv.weight"],
        ["conv.bias", "fc.weight", "fc.bias"],
    ]
    local = load_weight_set(run).weights_identity
    assert optimizer.weights.weights_identity == WeightsIdentity("org/l2l-set", sha, local.sha256)

    assert main(["publish", str(run), "--repo-id", "org/l2l-set", "--revision", "exp"]) == 0
    branch_sha = hub.resolve("org/l2l-set", "exp")
    assert hub.commit_deletions[branch_sha] == []  # nothing left to delete on the new branch
    assert f"LearnedOptimizer(model.named_parameters(), weights='org/l2l-set', revision='{branch_sha}')" in (
        capsys.readouterr().out
    )
    one = publish(tmp_path / "one", "org/l2l-set", revision="exp", token="t")  # a network in place of the set
    assert hub.commit_deletions[one.commit.oid] == ["weight_set.json"]
    assert (
        load_weights("org/l2l-set", revision="exp").weights_identity.sha256
        == load_weights(tmp_path / "one").weights_identity.sha256
    )


def test_publish_checks_every_file_of_a_set_and_its_evaluation(tmp_path, capsys):
    torch.manual_seed(0)
    run = tmp_path / "set-run"
    rule = NetworkRule((("conv.weight", "conv"),), "fc")
    WeightSet(
        {"conv": CoordinatewiseLSTM(hidden_size=3), "fc": CoordinatewiseLSTM(hidden_size=2)}, rule
    ).save_pretrained(run)
    plan = plan_publish(run, "org/name")
    assert plan.is_set and plan.replaced == ("config.json", "model.safetensors")
    assert "Not recorded" in plan.card and "fc/model.safetensors" in plan.describe()
    (run / "results.json").write_text(json.dumps({"weights_sha256": "0" * 64}))  # an evaluation of other weights
    with pytest.raises(PublishError, match="not the weights in"):
        plan_publish(run, "org/name")
    (run / "results.json").unlink()
    (run / "fc" / "model.safetensors").unlink()
    assert main(["publish", str(run), "--repo-id", "org/name", "--dry-run"]) == 2
    assert f"{run / 'fc' / 'model.safetensors'} is missing" in capsys.readouterr().err
