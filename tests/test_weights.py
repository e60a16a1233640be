"""Packaged weights: listing, checksums, the default name, and errors that name the weights."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, WeightsError, list_pretrained, load_weights
from learned_torch_optim import weights as weights_module
from learned_torch_optim.weights import DEFAULT_WEIGHTS


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """A packaged-weights folder holding one set, the default's name, with its SHA256SUMS."""
    torch.manual_seed(0)
    folder = tmp_path / DEFAULT_WEIGHTS
    CoordinatewiseLSTM().save_pretrained(folder)
    (folder / "DESCRIPTION").write_text("a test weight set\n")
    sums = "".join(
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {DEFAULT_WEIGHTS}/{name}\n"
        for name in ("config.json", "model.safetensors")
    )
    (tmp_path / "SHA256SUMS").write_text(sums)
    monkeypatch.setattr(weights_module, "packaged_root", lambda: tmp_path)
    return folder


def test_list_and_default_resolve_to_packaged_set(packaged):
    assert list_pretrained() == {DEFAULT_WEIGHTS: "a test weight set"}
    network = load_weights("default")
    assert network.weights_identity.source == DEFAULT_WEIGHTS
    assert network.weights_identity.sha256 == load_weights(packaged).weights_identity.sha256
    LearnedOptimizer([torch.nn.Parameter(torch.ones(2))])


def test_corrupt_packaged_file_fails_its_checksum(packaged):
    data = bytearray((packaged / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (packaged / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{DEFAULT_WEIGHTS}.*sha256"):
        load_weights(DEFAULT_WEIGHTS)


def test_unknown_name_lists_what_exists(packaged):
    with pytest.raises(WeightsError, match=f"no-such.*{DEFAULT_WEIGHTS}"):
        load_weights("no-such")


def test_folder_with_bad_safetensors_or_mismatched_config_is_named(tmp_path):
    torch.manual_seed(0)
    CoordinatewiseLSTM().save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad"):
        load_weights(tmp_path / "bad")
    CoordinatewiseLSTM(hidden_size=8).save_pretrained(tmp_path / "mismatch")
    (tmp_path / "mismatch" / "config.json").write_text('{"hidden_size": 20}')
    with pytest.raises(WeightsError, match="mismatch"):
        load_weights(tmp_path / "mismatch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json is missing"):
        load_weights(tmp_path / "empty")


def test_config_with_an_option_this_version_does_not_know_is_refused_by_name(tmp_path):
    """Weights from a newer version (an option added to config.json) must not load as another rule."""
    CoordinatewiseLSTM().save_pretrained(tmp_path / "newer")
    config = json.loads((tmp_path / "newer" / "config.json").read_text())
    (tmp_path / "newer" / "config.json").write_text(json.dumps({**config, "future_option": 1.0}))
    with pytest.raises(WeightsError, match="'future_option'.*newer learned-torch-optim"):
        load_weights(tmp_path / "newer")
    with pytest.raises(TypeError, match="future_option"):
        CoordinatewiseLSTM.from_pretrained(tmp_path / "newer")


def test_packaged_sets_in_the_repository_verify():
    for name in list_pretrained():
        network = load_weights(name)
        assert network.weights_identity.source == name


def test_packaged_weights_resolve_in_the_installed_layout(tmp_path):
    """In a wheel, pretrained/ is installed as learned_torch_optim/pretrained (pyproject's package-dir)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    site = tmp_path / "site"
    shutil.copytree(root / "learned_torch_optim", site / "learned_torch_optim")
    shutil.copytree(root / "pretrained", site / "learned_torch_optim" / "pretrained")
    code = (
        "import learned_torch_optim as l; "
        f"assert l.__file__.startswith({str(site)!r}), l.__file__; "
        f"assert set(l.list_pretrained()) == {set(list_pretrained())!r}; "
        "print(l.load_weights('default').weights_identity.source)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_WEIGHTS


def _other_weights(folder, **config):
    """A save_pretrained folder of weights unlike the packaged fixture's (another seed and size)."""
    torch.manual_seed(7)
    CoordinatewiseLSTM(hidden_size=4, **config).save_pretrained(folder)
    return folder


def test_packaged_names_win_over_local_folders_of_that_name(packaged, tmp_path, monkeypatch):
    """'default' and packaged names always mean the packaged set; './name' or a Path means the local folder."""
    work = tmp_path / "work"
    (work / "default").mkdir(parents=True)
    monkeypatch.chdir(work)
    packaged_sha = load_weights(packaged).weights_identity.sha256
    assert load_weights("default").weights_identity.sha256 == packaged_sha  # an empty ./default is not looked at
    (work / "default").rmdir()
    local = _other_weights(work / "default")
    _other_weights(work / DEFAULT_WEIGHTS)
    for name in ("default", DEFAULT_WEIGHTS):
        network = load_weights(name)
        assert network.weights_identity.source == DEFAULT_WEIGHTS
        assert network.weights_identity.sha256 == packaged_sha
    local_sha = load_weights(local).weights_identity.sha256
    assert local_sha != packaged_sha
    for path in ("./default", local, work / DEFAULT_WEIGHTS, Path("default")):
        network = load_weights(path)
        assert network.hidden_size == 4 and network.weights_identity.source == str((work / Path(path)).resolve())
    with pytest.raises(WeightsError, match="'missing': no such directory.*a path always names a local"):
        load_weights(Path("missing"))


def test_default_without_its_packaged_set_is_an_error_not_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_module, "packaged_root", lambda: tmp_path / "empty-install")
    monkeypatch.chdir(tmp_path)
    _other_weights(tmp_path / "default")
    with pytest.raises(WeightsError, match=f"default weights, packaged '{DEFAULT_WEIGHTS}', are missing"):
        load_weights("default")
