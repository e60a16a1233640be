"""The paper's CIFAR-10 task family (section 3.3): the conv net's shape and parameters, the label subsets CIFAR-5,
CIFAR-2 and LSTM-sub's held-out labels, batch statistics, and the two-network rule of its optimizer."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_sha256sums
from test_tasks import REAL_DATA, write_cifar

from learned_torch_optim.meta.tasks import CIFAR_HELD_OUT_LABELS, NETWORK_RULES, get_task, task_data_files

SIZES = {  # conv 3->16, 16->16, 16->16 (5x5, biases), 3 x 16 offsets, FC 256->32, 32 offsets, read-out 32->k
    "paper-cifar10": (10, 1216 + 6416 * 2 + 48 + 8224 + 32 + 330),
    "paper-cifar5": (5, 1216 + 6416 * 2 + 48 + 8224 + 32 + 165),
    "paper-cifar2": (2, 1216 + 6416 * 2 + 48 + 8224 + 32 + 66),
    "paper-cifar-sub": (5, 1216 + 6416 * 2 + 48 + 8224 + 32 + 165),
}
LABELS = {"paper-cifar10": range(10), "paper-cifar5": range(5), "paper-cifar2": range(2)}
LABELS["paper-cifar-sub"] = CIFAR_HELD_OUT_LABELS


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> str:
    """CIFAR files whose every image is one grey level that encodes its label: 10 * label + 5."""
    root = tmp_path_factory.mktemp("data")
    (root / "cifar10-subset").mkdir()
    for name, n in (("data_batch_1_first4000.bin", 60), ("test_batch_first1000.bin", 20)):
        labels = np.arange(n) % 10
        images = np.broadcast_to((10 * labels + 5).reshape(-1, 1, 1, 1), (n, 3, 32, 32))
        write_cifar(root / "cifar10-subset" / name, images, labels)
    write_sha256sums(root / "cifar10-subset")
    return str(root)


@pytest.mark.parametrize("name", list(SIZES))
def test_each_task_keeps_its_labels_relabelled_in_order(name, labelled_data):
    classes, size = SIZES[name]
    problem = get_task(name, data_dir=labelled_data).problem(0)
    assert problem.init_params().numel() == size
    assert problem.module.readout.out_features == classes == len(LABELS[name])
    images, targets = problem.sample_batch()
    assert images.shape == (128, 3, 32, 32) and targets.shape == (128,)
    original = ((images[:, 0, 0, 0] * 255).round().long() - 5) // 10
    assert set(original.tolist()) == set(LABELS[name])  # 128 draws: every label of the subset is there
    assert torch.equal(targets, torch.tensor([list(LABELS[name]).index(label) for label in original.tolist()]))
    assert task_data_files(name, "test") == [("cifar10-subset", "test_batch_first1000.bin")]


def test_held_out_labels_are_those_cifar5_and_cifar2_do_not_use():
    assert not set(CIFAR_HELD_OUT_LABELS) & (set(LABELS["paper-cifar5"]) | set(LABELS["paper-cifar2"]))


def test_batch_norm_uses_the_batch_statistics_and_keeps_no_state(labelled_data):
    problem = get_task("paper-cifar10", data_dir=labelled_data).problem(1)
    assert not list(problem.module.buffers())
    params = problem.init_params().requires_grad_(True)
    torch.manual_seed(0)
    inputs, targets = torch.rand(16, 3, 32, 32), torch.randint(10, (16,))
    loss = problem.loss(params, (inputs, targets))
    (grad,) = torch.autograd.grad(loss, params)
    model = problem.module
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    torch.testing.assert_close(grad, torch.cat([p.grad.reshape(-1) for p in model.parameters()]), rtol=1e-4, atol=1e-7)
    assert model.conv_norm[0].offset.grad.abs().sum() > 0
    normalised = model.conv_norm[0](model.conv[0](inputs))  # zero mean, unit variance per channel over the batch
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(problem.loss(params, (inputs, targets)), loss, rtol=0, atol=0)  # no state moved


def test_the_paper_rule_gives_the_conv_weights_their_own_network(labelled_data):
    problem = get_task("paper-cifar2", data_dir=labelled_data).problem(0)
    rule = NETWORK_RULES["paper-cifar"]
    by_network: dict[str, list[str]] = {}
    for name, _ in problem.segments():
        by_network.setdefault(rule.network_for(name), []).append(name)
    assert by_network["conv"] == ["conv.0.weight", "conv.1.weight", "conv.2.weight"]
    assert by_network["fc"] == [
        *(f"conv.{i}.bias" for i in range(3)),
        *(f"conv_norm.{i}.offset" for i in range(3)),
        *("hidden.weight", "hidden.bias", "hidden_norm.offset", "readout.weight", "readout.bias"),
    ]


@pytest.mark.skipif(not (Path(REAL_DATA) / "cifar10-subset").is_dir(), reason="the real data sets are not here")
def test_real_cifar_subsets_shapes_and_a_finite_loss():
    for name, (classes, size) in SIZES.items():
        task = get_task(name, data_dir=str(REAL_DATA))
        problem = task.problem(0)
        images, targets = problem.sample_batch()
        assert images.shape == (128, 3, 32, 32) and 0 <= targets.min() and targets.max() < classes, name
        assert problem.init_params().numel() == size, name
    loss = problem.loss(problem.init_params(), problem.sample_batch())
    assert torch.isfinite(loss) and abs(loss.item() - np.log(5)) < 0.1  # N(0, 0.01^2) read-out: near uniform
