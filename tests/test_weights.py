"""Packaged weights: listing, checksums, the default name, and errors that name the weights."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from learned_torch_optim import CoordinatewiseLSTM, LearnedOptimizer, WeightsError, list_pretrained, load_weights
from learned_torch_optim import weights as weights_module
from learned_torch_optim.network import MAX_HIDDEN_SIZE, REQUIRED_CONFIG
from learned_torch_optim.weights import DEFAULT_WEIGHTS, resolve_weights, weights_sha256


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
        weights = resolve_weights(name)
        assert weights.weights_identity.source == name
        for network_name, network in getattr(weights, "networks", {}).items():
            assert network.weights_identity.source == f"{name}/{network_name}"
            assert weights_sha256(load_weights(f"{name}/{network_name}")) == weights_sha256(network)


def test_packaged_weights_resolve_in_the_installed_layout(tmp_path):
    """In a wheel, pretrained/ is installed as learned_torch_optim/pretrained (pyproject's package-dir)."""
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


BAD_OPTIONS = [
    ("hidden_size", True),
    ("hidden_size", 20.0),
    ("num_layers", "2"),
    ("preprocessing", ["log_sign"]),
    ("preprocessing_p", float("inf")),
    ("output_scale", float("nan")),
    ("output_scale", float("inf")),
    ("output_scale", -0.1),
    ("output_scale", "0.1"),
    ("magnitude_scale", float("nan")),
    ("magnitude_scale", -1.0),
    ("magnitude_scale", "1"),
    ("momentum_decays", "0.9"),
    ("momentum_decays", ["0.9"]),
    ("momentum_decays", [float("nan")]),
    ("second_moment_decay", "0.999"),
    ("step_timescales", [float("inf")]),
    ("step_timescales", 10.0),
    ("readout_skip", "false"),
    ("output", None),
    ("update_clip", float("inf")),
    ("update_clip", "0.05"),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_option_values_are_refused_in_code_and_in_config_json(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"^{option} must be"):
        CoordinatewiseLSTM(**{option: value})
    folder = _other_weights(tmp_path / "weights")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, option: value}))
    with pytest.raises(WeightsError, match=f"weights.*weights.*{option} must be"):
        load_weights(folder)


def test_config_json_must_be_an_object_stating_the_required_options(tmp_path):
    folder = _other_weights(tmp_path / "weights")
    (folder / "config.json").write_text("[20, 2]")
    with pytest.raises(WeightsError, match=r"config.json \(.*weights/config.json\) holds a JSON list, not an object"):
        load_weights(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="does not state hidden_size, num_layers, preprocessing, preprocessing_p, "):
        load_weights(folder)
    (folder / "config.json").write_text('{"hidden_size": 4, "num_layers": 2}')
    with pytest.raises(ValueError, match=r"weights/config.json does not state preprocessing, preprocessing_p"):
        CoordinatewiseLSTM.from_pretrained(folder)


def test_shipped_configs_state_the_required_options():
    root = weights_module.packaged_root()
    configs = [path for name in list_pretrained() for path in (root / name).glob("**/config.json")]
    assert len(configs) >= len(list_pretrained())
    for path in configs:
        assert set(REQUIRED_CONFIG) <= set(json.loads(path.read_text())), path


@pytest.mark.parametrize("hidden_size", [2000, 10**12])
def test_config_sizes_are_checked_before_anything_is_allocated(tmp_path, monkeypatch, hidden_size):
    """A small config claiming a huge network fails at once, not after allocating the network it claims."""
    folder = _other_weights(tmp_path / "hostile")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": hidden_size}))
    allocated = []
    monkeypatch.setattr(torch.nn.LSTMCell, "reset_parameters", lambda cell: allocated.append(cell.weight_hh.device))
    expected = "beyond the bound" if hidden_size > MAX_HIDDEN_SIZE else r"does not hold the tensors.*\(16, 4\) where"
    with pytest.raises(WeightsError, match=f"hostile.*{expected}"):
        load_weights(folder)
    assert all(device.type == "meta" for device in allocated)


def test_non_finite_or_non_float_tensors_are_refused(tmp_path):
    folder = _other_weights(tmp_path / "nan")
    tensors = load_file(folder / "model.safetensors")
    tensors["readout.bias"] = torch.tensor([float("nan")])
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"nan.*model.safetensors: tensor 'readout.bias' holds NaN or infinite"):
        load_weights(folder)
    tensors["readout.bias"] = torch.tensor([1], dtype=torch.int32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(WeightsError, match="tensor 'readout.bias' has dtype torch.int32, not floating point"):
        load_weights(folder)
