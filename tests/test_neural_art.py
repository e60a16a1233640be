"""The Neural Art tasks (paper section 3.4): with a small random feature network and injected style images, so that
no test of the tasks depends on the shipped feature weights or on scikit-learn.  The figure tool's test runs the
built-in task end to end (the shipped network, scikit-learn's styles), and is skipped without scikit-learn."""

import copy
import dataclasses
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_sha256sums
from safetensors.torch import save_file
from test_tasks import write_cifar

from learned_torch_optim.meta.art import (
    ArtFeatureNet,
    ArtFeaturesError,
    gram_matrix,
    load_art_features,
    load_style_image,
    save_png,
    style_loss,
    total_variation,
)
from learned_torch_optim.meta.data import load_cifar10_jpeg
from learned_torch_optim.meta.evaluation.cache import builtin_task_id
from learned_torch_optim.meta.tasks import ART_FEATURE_FILES, BUILTIN_TASKS, NeuralArtTask, task_data_files

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TRAIN_LEVELS, TEST_LEVELS = range(0, 100, 5), range(150, 250, 10)
"""The grey levels of the fake CIFAR images: every image is one level, the two splits' levels apart."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    (root / "cifar10-subset").mkdir()
    for name, levels in (("data_batch_1_first4000.bin", TRAIN_LEVELS), ("test_batch_first1000.bin", TEST_LEVELS)):
        images = np.broadcast_to(np.array(levels).reshape(-1, 1, 1, 1), (len(levels), 3, 32, 32))
        write_cifar(root / "cifar10-subset" / name, images, np.arange(len(levels)) % 10)
    write_sha256sums(root / "cifar10-subset")
    return str(root)


@pytest.fixture(scope="module")
def features() -> ArtFeatureNet:
    torch.manual_seed(0)
    return ArtFeatureNet(blocks=((4, 4), (8, 8), (8, 8))).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def style() -> torch.Tensor:
    return torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(1))


def make_task(data_dir, features, style, size=16, split="train") -> NeuralArtTask:
    return NeuralArtTask(size, style, split, features=features, data_dir=data_dir)


def test_shapes_segments_and_a_deterministic_loss(data_dir, features, style):
    problem = make_task(data_dir, features, style).problem(0)
    theta = problem.init_params()
    assert theta.shape == (3 * 16 * 16,) and theta.dtype == torch.float32
    assert problem.segments() == [("image", 3 * 16 * 16)]
    assert problem.sample_batch() is None
    assert problem.content.shape == (3, 16, 16) and problem.image(theta * 3).max() <= 1
    loss = problem.loss(theta, None)
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.equal(loss, problem.loss(theta, None))
    terms = problem.terms(theta)
    assert set(terms) == {"content", "style", "reg"} and all(value > 0 for value in terms.values())
    assert make_task(data_dir, features, style, size=32).problem(0).init_params().shape == (3 * 32 * 32,)


def test_problems_are_deterministic_in_their_seed(data_dir, features, style):
    task = make_task(data_dir, features, style)
    first, again, other = task.problem(5), task.problem(5), task.problem(6)
    assert torch.equal(first.init_params(), again.init_params()) and torch.equal(first.content, again.content)
    assert torch.equal(first.loss(first.init_params(), None), again.loss(again.init_params(), None))
    assert not torch.equal(first.init_params(), other.init_params())


def test_adam_decreases_the_loss(data_dir, features, style):
    problem = make_task(data_dir, features, style).problem(2)
    theta = problem.init_params().requires_grad_()
    optimizer = torch.optim.Adam([theta], lr=0.02)
    start = problem.loss(theta, None).item()
    for _ in range(15):
        optimizer.zero_grad()
        problem.loss(theta, None).backward()
        optimizer.step()
    assert problem.loss(theta, None).item() < 0.7 * start


def test_gram_style_loss_ignores_where_features_are():
    generator = torch.Generator().manual_seed(3)
    features, target = torch.randn(1, 6, 5, 7, generator=generator), torch.randn(1, 6, 5, 7, generator=generator)
    permutation = torch.randperm(35, generator=generator)
    shuffled = features.flatten(-2)[..., permutation].view_as(features)
    assert torch.allclose(gram_matrix(shuffled), gram_matrix(features), atol=1e-6)
    loss = style_loss([gram_matrix(features)], [gram_matrix(target)])
    assert torch.allclose(style_loss([gram_matrix(shuffled)], [gram_matrix(target)]), loss, atol=1e-6)


def test_total_variation_is_zero_on_a_constant_image_and_one_third_on_white_noise():
    assert total_variation(torch.full((3, 9, 11), 0.4)).item() == 0
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert total_variation(noise).item() == pytest.approx(1 / 3, rel=0.02)


def test_the_test_split_holds_out_its_content_images(data_dir, features, style):
    train_levels = {make_task(data_dir, features, style).problem(s).content[0, 0, 0].item() for s in range(30)}
    test_levels = {
        make_task(data_dir, features, style, split="test").problem(s).content[0, 0, 0].item() for s in range(30)
    }
    assert max(train_levels) < 100 / 255 < 150 / 255 <= min(test_levels) + 1e-6
    assert len(train_levels) > 5 and len(test_levels) > 3
    assert task_data_files("neural-art-64", "test") == [("cifar10-subset", "test_batch_first1000.bin")]


def test_the_builtin_tasks_declare_size_and_style():
    declared = {name: BUILTIN_TASKS[name].factory.keywords for name in BUILTIN_TASKS if name.startswith("neural-art")}
    assert declared == {
        "neural-art-64": {"size": 64, "style": "china"},
        "neural-art-128": {"size": 128, "style": "china"},
        "neural-art-64-new-style": {"size": 64, "style": "flower"},
    }


def test_the_baseline_cache_keys_the_tasks_on_the_feature_network(tmp_path, monkeypatch, data_dir):
    assert all(BUILTIN_TASKS[name].package_files == ART_FEATURE_FILES for name in BUILTIN_TASKS if "art" in name)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one network")
    declared = dataclasses.replace(BUILTIN_TASKS["neural-art-64"], package_files=(weights,))
    monkeypatch.setitem(BUILTIN_TASKS, "neural-art-64", declared)
    before = builtin_task_id("neural-art-64", "test", data_dir)
    weights.write_bytes(b"a retrained network")
    assert builtin_task_id("neural-art-64", "test", data_dir) != before
    assert builtin_task_id("paper-cifar10", "test", data_dir).count("|") == 2  # no package files, key as before


def write_features(folder, network: ArtFeatureNet) -> None:
    folder.mkdir()
    save_file(dict(network.state_dict()), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(network.config()))
    write_sha256sums(folder)


def test_feature_weights_load_back_and_are_checked(tmp_path, features):
    write_features(tmp_path / "net", features)
    loaded = load_art_features(tmp_path / "net")
    image = torch.rand(1, 3, 20, 20)
    assert torch.equal(loaded(image)["relu3_2"], features(image)["relu3_2"])
    assert not any(p.requires_grad for p in loaded.parameters())
    (tmp_path / "net" / "model.safetensors").write_bytes(b"x" + (tmp_path / "net" / "model.safetensors").read_bytes())
    with pytest.raises(ArtFeaturesError, match="model.safetensors does not match its sha256"):
        load_art_features(tmp_path / "net")


def test_missing_feature_weights_name_the_file_and_the_command(tmp_path, data_dir, style):
    with pytest.raises(ArtFeaturesError, match=r"model\.safetensors does not exist.*tools/train_art_features\.py"):
        load_art_features(tmp_path)
    task = NeuralArtTask(16, style, features=tmp_path, data_dir=data_dir)  # builds: the net is loaded at need
    with pytest.raises(ArtFeaturesError, match=r"model\.safetensors does not exist.*tools/train_art_features\.py"):
        task.problem(0)


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install learned-torch-optim\[art\]"):
        load_style_image("china")
    with pytest.raises(ValueError, match="unknown style image 'monet'"):
        load_style_image("monet")


def test_the_sample_photographs_load_when_scikit_learn_is_there():
    pytest.importorskip("sklearn")
    for name in ("china", "flower"):
        image = load_style_image(name)
        assert image.shape == (3, 427, 640) and 0 <= image.min() and image.max() <= 1


def test_save_png_writes_the_clamped_image(tmp_path):
    pytest.importorskip("matplotlib")
    save_png(torch.linspace(-1, 2, 3 * 8 * 8).view(3, 8, 8), tmp_path / "image.png")
    assert (tmp_path / "image.png").read_bytes().startswith(b"\x89PNG")


def test_cifar10_jpeg_reader(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    folder = tmp_path / "cifar10-jpeg"
    folder.mkdir()
    with zipfile.ZipFile(folder / "cifar10_jpeg.zip", "w") as archive:
        for name in ("train/cat/0001.jpg", "train/airplane/0000.jpg", "test/truck/0000.jpg"):
            buffer = io.BytesIO()
            image_module.new("RGB", (32, 32), (200, 100, 0)).save(buffer, "JPEG")
            archive.writestr(name, buffer.getvalue())
    write_sha256sums(folder)
    images, labels = load_cifar10_jpeg("train", str(tmp_path))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 3]
    assert images[:, 0].mean().item() == pytest.approx(200 / 255, abs=0.02)
    with zipfile.ZipFile(folder / "cifar10_jpeg.zip", "a") as archive:
        archive.writestr("train/cat/notes.txt", "x")
    write_sha256sums(folder)
    with pytest.raises(ValueError, match="unexpected member 'train/cat/notes.txt'"):
        load_cifar10_jpeg("test", str(tmp_path))


def test_moving_a_problem_to_a_device_leaves_the_tasks_feature_network_where_it_was(data_dir, features, style):
    """The task's feature network is shared by its problems: ``problem.to(device)`` moved it in place
    (``nn.Module.to``), so the next problem computed its targets from CPU images with weights on the device and
    failed (meta-training and validation on CUDA: the second problem)."""
    task = make_task(data_dir, copy.deepcopy(features), style)
    moved = task.problem(0).to("meta")
    assert next(task.features.parameters()).device.type == "cpu" and moved.features.mean.device.type == "meta"
    after, fresh = task.problem(1), make_task(data_dir, features, style).problem(1)
    torch.testing.assert_close(after.loss(after.init_params(), None), fresh.loss(fresh.init_params(), None))


def test_the_figure_tool_draws_an_evaluations_images(tmp_path, data_dir):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("neural_art_figure", TOOLS / "neural_art_figure.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = {
        "task": "neural-art-64",
        "split": "test",
        "steps": 2,
        "problem_seeds": [5, 6, 7],
        "weights": "l2l-paper-mnist",
        "best_baseline": "adam",
        "optimizers": {"adam": {"best_lr": 0.1}},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    tool.main(["--results", str(tmp_path), "--images", "2", "--data-dir", data_dir, "--out", str(tmp_path / "a.png")])
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "results.json").write_text(json.dumps({**results, "task": "paper-cifar10"}))
    with pytest.raises(SystemExit, match="'paper-cifar10' is not a Neural Art task"):
        tool.main(["--results", str(tmp_path), "--out", str(tmp_path / "b.png")])
