"""The built-in task families beyond the paper's: data readers on generated files, determinism, gradients, progress."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_fake_mnist, write_idx, write_sha256sums

from learned_torch_optim.meta import data
from learned_torch_optim.meta.data import (
    DATASETS,
    DataNotFoundError,
    dataset_files,
    load_cifar10_subset,
    load_mnist1d,
    load_text,
    read_cifar_binary,
    read_npz,
)
from learned_torch_optim.meta.tasks import (
    BUILTIN_TASKS,
    TASK_DESCRIPTIONS,
    ConcatenatedProblems,
    IllConditionedQuadraticTask,
    ModuleProblem,
    StackedModuleProblems,
    get_task,
    mnist_conv_task,
    mnist_mlp_task,
    task_data_files,
)

NEW_TASKS = [
    "mlp-tanh",
    "mlp-tanh-512",
    "mlp-gelu",
    "mlp-relu-layernorm",
    "fashion-mnist-mlp",
    "logistic-regression",
    "mnist-conv",
    "mnist-conv-512",
    "cifar-conv",
    "mnist1d-mlp",
    "char-rnn",
    "quadratic-ill",
    "char-attention-16",
    "char-attention-128",
    "char-transformer",
    "mnist-autoencoder",
    "mnist1d-conv",
    "teacher-student",
    "rosenbrock",
]
SYNTHETIC = ("quadratic-ill", "rosenbrock")
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


def write_cifar(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """CIFAR-10 binary records: label byte, then the R, G, B planes."""
    records = np.concatenate([labels.reshape(-1, 1), images.reshape(len(images), -1)], axis=1).astype(np.uint8)
    path.write_bytes(records.tobytes())


def fake_data(root: Path) -> Path:
    """Tiny files in the standard formats for every dataset the new tasks read."""
    make_fake_mnist(root, n=32)
    gen = torch.Generator().manual_seed(1)
    (root / "fashion-mnist").mkdir()
    for prefix in ("train", "t10k"):
        images = torch.randint(0, 256, (32, 28, 28), generator=gen)
        write_idx(root / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz", torch.randint(0, 10, (32,), generator=gen))
    rng = np.random.default_rng(2)
    (root / "cifar10-subset").mkdir()
    for name, n in (("data_batch_1_first4000.bin", 24), ("test_batch_first1000.bin", 8)):
        write_cifar(root / "cifar10-subset" / name, rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n))
    (root / "mnist1d").mkdir()
    np.savez(
        root / "mnist1d" / "mnist1d_data.npz",
        x=rng.normal(size=(40, 40)),
        y=rng.integers(0, 10, 40),
        x_test=rng.normal(size=(10, 40)),
        y_test=rng.integers(0, 10, 10),
        t=np.linspace(0, 1, 40),
    )
    (root / "tinyshakespeare").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text(TEXT, encoding="utf-8")
    for folder in root.iterdir():
        write_sha256sums(folder)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(fake_data(tmp_path_factory.mktemp("data")))


def test_every_new_task_is_described():
    assert set(NEW_TASKS) <= set(TASK_DESCRIPTIONS)


@pytest.mark.parametrize("name", NEW_TASKS)
def test_task_is_deterministic_in_the_seed(name, data_dir):
    task = get_task(name, data_dir=data_dir)
    first, again, other = task.problem(3), task.problem(3), task.problem(4)
    assert torch.equal(first.init_params(), again.init_params())
    assert not torch.equal(first.init_params(), other.init_params())
    if name in SYNTHETIC:
        return
    batch, batch_again, batch_other = first.sample_batch(), again.sample_batch(), other.sample_batch()
    assert all(torch.equal(a, b) for a, b in zip(batch, batch_again, strict=True))
    assert not torch.equal(batch[0], batch_other[0])
    assert not torch.equal(first.sample_batch()[0], batch[0])  # the stream moves on


@pytest.mark.parametrize("name", NEW_TASKS)
def test_gradient_matches_the_module_and_adam_makes_progress(name, data_dir):
    torch.manual_seed(0)
    problem = get_task(name, data_dir=data_dir).problem(0)
    params = problem.init_params().requires_grad_(True)
    batch = problem.sample_batch()
    loss = problem.loss(params, batch)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, params)
    if isinstance(problem, ModuleProblem):
        model = problem.module
        model.zero_grad()
        problem.loss_fn(model(batch[0]), batch[1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    elif name == "rosenbrock":
        x = params.detach().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum(), x)
        assert problem.loss(torch.ones(10), None) == 0
    else:
        delta = params.detach() - problem.center[0]
        expected = problem.A[0] @ delta
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)

    optimizer = torch.optim.Adam([params], lr=1e-2 if name != "quadratic-ill" else 1e-1)
    if name == "char-transformer":
        assert params.numel() > 10**6
    for _ in range(15):
        optimizer.zero_grad()
        (params.grad,) = torch.autograd.grad(problem.loss(params, batch), params)
        optimizer.step()
    assert problem.loss(params.detach(), batch) < loss


def test_task_shapes(data_dir):
    shapes = {
        "mnist-conv": ((64, 1, 28, 28), (64,), 80 + 1168 + 16 * 7 * 7 * 10 + 10),
        "cifar-conv": ((64, 3, 32, 32), (64,), 448 + 4640 + 32 * 8 * 8 * 10 + 10),
        "mnist1d-mlp": ((128, 40), (128,), 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
        "char-rnn": ((32, 32), (32, 32), None),
        "logistic-regression": ((128, 784), (128,), 7850),
    }
    for name, (inputs_shape, targets_shape, size) in shapes.items():
        problem = get_task(name, data_dir=data_dir).problem(0)
        inputs, targets = problem.sample_batch()
        assert inputs.shape == inputs_shape and targets.shape == targets_shape, name
        if size is not None:
            assert problem.init_params().numel() == size, name
    inputs, targets = get_task("char-rnn", data_dir=data_dir).problem(0).sample_batch()
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


@pytest.mark.parametrize("make_task", [mnist_mlp_task, mnist_conv_task])
def test_a_task_on_its_first_examples_draws_only_those(make_task, data_dir):
    images, _ = data.load_image_classification("mnist", "train", data_dir)
    first = images[:5].reshape(5, -1)
    problem = make_task(examples=5, data_dir=data_dir).problem(0)
    drawn = torch.cat([problem.sample_batch()[0].reshape(-1, first.shape[1]) for _ in range(4)])
    assert (drawn[:, None, :] == first[None]).all(dim=2).any(dim=1).all()
    assert len(torch.unique(drawn, dim=0)) == 5


def test_quadratic_ill_has_the_drawn_condition_number():
    task = IllConditionedQuadraticTask()
    for seed in range(3):
        A, _, _, kappa = task.draw(seed)
        assert 10 <= kappa <= 1e4
        eigenvalues = torch.linalg.eigvalsh(A.double())
        assert eigenvalues.max() / eigenvalues.min() == pytest.approx(kappa, rel=1e-2)
    both = task.problems([0, 1])
    assert both.num_problems == 2 and both.init_params().shape == (40,)
    single = [task.problem(s) for s in (0, 1)]
    total = sum(p.loss(p.init_params(), None) for p in single)
    torch.testing.assert_close(both.loss(both.init_params(), None), total)


def test_cifar_reader_decodes_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 3, 32, 32)), rng.integers(0, 10, 5)
    (tmp_path / "cifar10-subset").mkdir()
    write_cifar(tmp_path / "cifar10-subset" / "test_batch_first1000.bin", images, labels)
    write_sha256sums(tmp_path / "cifar10-subset")
    raw_images, raw_labels = read_cifar_binary(tmp_path / "cifar10-subset" / "test_batch_first1000.bin")
    assert np.array_equal(raw_images, images) and np.array_equal(raw_labels, labels)
    decoded, decoded_labels = load_cifar10_subset("test", str(tmp_path))
    torch.testing.assert_close(decoded, torch.tensor(images, dtype=torch.float32) / 255)
    assert decoded_labels.tolist() == labels.tolist()
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="CIFAR"):
        read_cifar_binary(tmp_path / "bad.bin")


def test_mnist1d_reader_decodes_what_was_written_and_never_unpickles(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(6, 40)), "y": rng.integers(0, 10, 6), "x_test": rng.normal(size=(2, 40))}
    arrays["y_test"] = rng.integers(0, 10, 2)
    (tmp_path / "mnist1d").mkdir()
    np.savez(tmp_path / "mnist1d" / "mnist1d_data.npz", **arrays)
    write_sha256sums(tmp_path / "mnist1d")
    x, y = load_mnist1d("test", str(tmp_path))
    torch.testing.assert_close(x, torch.tensor(arrays["x_test"], dtype=torch.float32))
    assert y.tolist() == arrays["y_test"].tolist()
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        read_npz(tmp_path / "objects.npz")


def test_text_reader_splits_90_10_with_the_whole_vocabulary(tmp_path):
    text = "abcabcabcz"  # 'z' only in the test part; still in the vocabulary
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(text, encoding="utf-8")
    write_sha256sums(tmp_path / "tinyshakespeare")
    train, vocabulary = load_text("train", str(tmp_path))
    test, vocabulary_test = load_text("test", str(tmp_path))
    assert vocabulary == vocabulary_test == "abcz"
    assert "".join(vocabulary[i] for i in train.tolist()) == text[:9]
    assert "".join(vocabulary[i] for i in test.tolist()) == text[9:]


def test_missing_file_without_url_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    for loader, name in ((load_cifar10_subset, "data_batch_1_first4000.bin"), (load_mnist1d, "mnist1d_data.npz")):
        with pytest.raises(DataNotFoundError, match=name) as error:
            loader("train", str(tmp_path / "empty"))
        assert "no stable download URL" in str(error.value) and "--data-dir" in str(error.value)
    with pytest.raises(DataNotFoundError, match="offline"):
        load_text("train", str(tmp_path / "empty"))


def test_task_data_files_name_what_the_task_reads():
    assert task_data_files("quadratic-ill", "train") == []
    assert task_data_files("fashion-mnist-mlp", "test")[0] == ("fashion-mnist", "t10k-images-idx3-ubyte.gz")
    assert task_data_files("cifar-conv", "train") == [("cifar10-subset", "data_batch_1_first4000.bin")]
    assert task_data_files("char-rnn", "test") == [("tinyshakespeare", "input.txt")]


@pytest.mark.parametrize("name", [name for name, task in BUILTIN_TASKS.items() if task.dataset is not None])
@pytest.mark.parametrize("split", ["train", "test"])
def test_declared_data_files_are_the_files_the_task_reads(name, split, data_dir, monkeypatch):
    read = []
    original = data.dataset_file
    monkeypatch.setattr(data, "dataset_file", lambda d, f, root=None: read.append((d, f)) or original(d, f, root))
    for loader in (data.load_image_classification, data.load_cifar10_subset, data.load_mnist1d, data.load_text):
        loader.cache_clear()
    get_task(name, split=split, data_dir=data_dir)
    assert sorted(read) == sorted(task_data_files(name, split))


def test_every_dataset_split_names_files_of_known_sha256():
    for dataset, entry in DATASETS.items():
        for split in ("train", "test"):
            assert dataset_files(dataset, split) and set(dataset_files(dataset, split)) <= set(entry["sha256"])
    with pytest.raises(ValueError, match="'validation'"):
        dataset_files("mnist", "validation")


@pytest.mark.skipif(not (REAL_DATA / "cifar10-subset").is_dir(), reason="the real data sets are not here")
def test_real_data_shapes():
    root = str(REAL_DATA)
    images, labels = load_cifar10_subset("train", root)
    assert images.shape == (4000, 3, 32, 32) and labels.min() == 0 and labels.max() == 9
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert load_cifar10_subset("test", root)[0].shape == (1000, 3, 32, 32)
    x, y = load_mnist1d("train", root)
    assert x.shape == (4000, 40) and y.shape == (4000,) and load_mnist1d("test", root)[0].shape == (1000, 40)
    train, vocabulary = load_text("train", root)
    test, _ = load_text("test", root)
    assert len(vocabulary) == 65 and len(train) + len(test) == 1115394 and len(train) == int(0.9 * 1115394)


@pytest.mark.parametrize("name", [n for n in BUILTIN_TASKS if n not in ("quadratic", "quadratic-ill", "rosenbrock")])
def test_a_vectorized_meta_batch_is_the_concatenation_of_its_problems(name, data_dir):
    task = get_task(name, data_dir=data_dir)
    if not getattr(task, "vectorize", False):
        pytest.skip(f"{name} is not vectorized")
    seeds = [5, 6, 7]
    stacked, one_by_one = task.problems(seeds), ConcatenatedProblems([task.problem(seed) for seed in seeds])
    assert isinstance(stacked, StackedModuleProblems) and stacked.segments() == one_by_one.segments()
    params = stacked.init_params().requires_grad_(True)
    assert torch.equal(params, one_by_one.init_params())
    for _ in range(2):  # the minibatch streams move on alike
        loss = stacked.loss(params, stacked.sample_batch())
        expected = one_by_one.loss(params, one_by_one.sample_batch())
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        grad, expected_grad = torch.autograd.grad(loss, params)[0], torch.autograd.grad(expected, params)[0]
        # equal to fp32 rounding (batched reductions sum in another order; a conv bias before batch norm has a
        # gradient of exactly 0 in exact arithmetic, so elementwise relative tolerances cannot hold there)
        assert (grad - expected_grad).norm() <= 1e-4 * expected_grad.norm()


def test_a_mixture_meta_batch_groups_each_familys_problems(data_dir):
    mixture = get_task("mlp-tanh,mnist-conv,char-rnn", data_dir=data_dir)
    seeds = list(range(10))
    batch = mixture.problems(seeds)
    order = list(dict.fromkeys(mixture.family(seed).name for seed in seeds))
    kinds = [ConcatenatedProblems if name == "char-rnn" else StackedModuleProblems for name in order]
    assert [type(part) for part in batch.parts] == kinds
    grouped = [seed for name in order for seed in seeds if mixture.family(seed).name == name]
    assert torch.equal(batch.init_params(), torch.cat([mixture.problem(seed).init_params() for seed in grouped]))
    assert batch.num_problems == 10
