"""Tasks: families of optimisation problems to meta-train and evaluate on.

A :class:`Problem` is one optimisation problem: flat initial parameters, a loss of ``(parameters, batch)`` and a
minibatch sampler.  A :class:`Task` draws problems from a seed, so every optimizer can be run on the same problems
and minibatches.  :class:`ModuleTask` builds a task from any ``nn.Module`` factory with
``torch.func.functional_call``, so users meta-train on their own problem family.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..weight_set import NetworkRule
from .art import (
    ART_FEATURES_DIR,
    CONTENT_LAYER,
    NEW_STYLE,
    STYLE_LAYERS,
    TRAINING_STYLE,
    ArtFeatureNet,
    content_loss,
    gram_matrix,
    load_art_features,
    load_style_image,
    square_resize,
    style_loss,
    total_variation,
)
from .data import dataset_files, load_cifar10_subset, load_image_classification, load_mnist1d, load_text


class Problem(ABC):
    """One optimisation problem (possibly several independent ones side by side, see ``num_problems``)."""

    num_problems: int = 1

    @abstractmethod
    def init_params(self) -> Tensor:
        """The initial parameters, one flat float32 vector."""

    @abstractmethod
    def loss(self, params: Tensor, batch: Any) -> Tensor:
        """The loss at ``params`` on ``batch``; summed over the independent problems it holds."""

    def sample_batch(self) -> Any:
        """The next minibatch (``None`` for deterministic problems)."""
        return None

    def segments(self) -> list[tuple[str, int]] | None:
        """The parameters the flat vector is made of, in order: ``(name, number of coordinates)`` each, or ``None``
        where the problem does not name them.  A weight set's rule gives each parameter its network by this name
        (paper section 3.3: one LSTM for the convolutional parameters, one for the rest)."""
        return None

    def to(self, device: torch.device | str) -> Problem:
        """This problem with its tensors (and the minibatches it samples) on ``device``."""
        if torch.device(device) != torch.device("cpu"):
            raise NotImplementedError(f"{type(self).__name__} does not implement to({device!r})")
        return self


class Task(ABC):
    """A family of problems.  ``problem(seed)`` must be deterministic in ``seed``."""

    name: str = "task"
    default_meta_batch_size: int = 1

    @abstractmethod
    def problem(self, seed: int) -> Problem:
        """Draw one problem and its minibatch stream from ``seed``."""

    def problems(self, seeds: Sequence[int]) -> Problem:
        """Several independent problems as one (their parameters concatenated, their losses summed)."""
        if len(seeds) == 1:
            return self.problem(seeds[0])
        return ConcatenatedProblems([self.problem(seed) for seed in seeds])


class ConcatenatedProblems(Problem):
    def __init__(self, problems: list[Problem]) -> None:
        self.parts = problems
        self.num_problems = sum(p.num_problems for p in problems)
        self.sizes = [p.init_params().numel() for p in problems]

    def init_params(self) -> Tensor:
        return torch.cat([p.init_params() for p in self.parts])

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        chunks = params.split(self.sizes)
        return sum(p.loss(x, b) for p, x, b in zip(self.parts, chunks, batch, strict=True))

    def sample_batch(self) -> Any:
        return [p.sample_batch() for p in self.parts]

    def segments(self) -> list[tuple[str, int]] | None:
        parts = [p.segments() for p in self.parts]
        return None if any(part is None for part in parts) else [segment for part in parts for segment in part]

    def to(self, device: torch.device | str) -> Problem:
        self.parts = [p.to(device) for p in self.parts]
        return self


class RescaledProblem(Problem):
    """``problem`` in rescaled coordinates (Lv et al. 2017, "random scaling"): the optimizer works on ``phi`` with
    ``theta = scales * phi``, so ``loss(phi) = f(scales * phi)`` and ``phi_0 = theta_0 / scales``.  A rule that
    learned one parameter scale per task cannot fit such problems, which teaches it to adapt to the scale."""

    def __init__(self, problem: Problem, scales: Tensor) -> None:
        self.problem, self.scales = problem, scales
        self.num_problems = problem.num_problems

    def init_params(self) -> Tensor:
        return self.problem.init_params() / self.scales

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        return self.problem.loss(params * self.scales, batch)

    def sample_batch(self) -> Any:
        return self.problem.sample_batch()

    def segments(self) -> list[tuple[str, int]] | None:
        return self.problem.segments()

    def to(self, device: torch.device | str) -> Problem:
        self.problem = self.problem.to(device)
        self.scales = self.scales.to(device)
        return self


class MixtureTask(Task):
    """Several task families as one: problem ``seed`` comes from the family that ``seed`` picks (uniformly), so a
    meta-batch of seeds mixes families and every draw stays deterministic."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            raise ValueError("a MixtureTask needs at least one task")
        self.tasks = list(tasks)
        self.name = ",".join(task.name for task in self.tasks)
        self.default_meta_batch_size = 1

    def family(self, seed: int) -> Task:
        """The family that problem ``seed`` is drawn from."""
        pick = torch.randint(len(self.tasks), (1,), generator=torch.Generator().manual_seed(seed)).item()
        return self.tasks[int(pick)]

    def problem(self, seed: int) -> Problem:
        return self.family(seed).problem(seed)

    def problems(self, seeds: Sequence[int]) -> Problem:
        """The problems of ``seeds``, those of each family together (so a family can batch them, see
        :class:`StackedModuleProblems`), the families in the order the seeds first pick them."""
        if len(seeds) == 1:
            return self.problem(seeds[0])
        by_family: dict[int, list[int]] = {}
        for seed in seeds:
            by_family.setdefault(self.tasks.index(self.family(seed)), []).append(seed)
        groups = [self.tasks[index].problems(group) for index, group in by_family.items()]
        return groups[0] if len(groups) == 1 else ConcatenatedProblems(groups)


class QuadraticProblems(Problem):
    """``f(theta) = ||W theta - y||^2`` (paper section 3.1), ``k`` independent draws side by side."""

    def __init__(self, W: Tensor, y: Tensor, theta0: Tensor) -> None:
        self.W, self.y, self.theta0 = W, y, theta0
        self.num_problems = W.shape[0]

    def init_params(self) -> Tensor:
        return self.theta0.reshape(-1).clone()

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        theta = params.view(self.num_problems, -1, 1)
        return (torch.bmm(self.W, theta).squeeze(-1) - self.y).pow(2).sum()

    def to(self, device: torch.device | str) -> Problem:
        self.W, self.y, self.theta0 = self.W.to(device), self.y.to(device), self.theta0.to(device)
        return self


class QuadraticTask(Task):
    """The paper's synthetic quadratics: ``W``, ``y`` with i.i.d. standard normal entries, fresh per problem;
    ``theta_0 ~ N(0, init_std^2)`` (0.01, as in the original implementation)."""

    default_meta_batch_size = 128

    def __init__(self, dims: int = 10, init_std: float = 0.01, name: str = "quadratic") -> None:
        self.dims, self.init_std, self.name = dims, init_std, name

    def problem(self, seed: int) -> Problem:
        return self.problems([seed])

    def problems(self, seeds: Sequence[int]) -> Problem:
        draws = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            W = torch.randn(self.dims, self.dims, generator=gen)
            y = torch.randn(self.dims, generator=gen)
            theta0 = self.init_std * torch.randn(self.dims, generator=gen)
            draws.append((W, y, theta0))
        W, y, theta0 = (torch.stack(parts) for parts in zip(*draws, strict=True))
        return QuadraticProblems(W, y, theta0)


class ModuleProblem(Problem):
    """An ``nn.Module`` trained on minibatches, its parameters seen as one flat vector."""

    def __init__(
        self,
        module: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch_sampler: Callable[[torch.Generator], tuple[Tensor, Tensor]],
        generator: torch.Generator,
    ) -> None:
        self.module, self.loss_fn, self.batch_sampler, self.generator = module, loss_fn, batch_sampler, generator
        named = [(name, p) for name, p in module.named_parameters()]
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.theta0 = torch.cat([p.detach().reshape(-1).float() for _, p in named])
        self.device = torch.device("cpu")

    def init_params(self) -> Tensor:
        return self.theta0.clone()

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        chunks = params.split([math.prod(shape) for shape in self.shapes])
        named = {name: chunk.view(shape) for name, chunk, shape in zip(self.names, chunks, self.shapes, strict=True)}
        inputs, targets = batch
        return self.loss_fn(functional_call(self.module, named, (inputs,)), targets)

    def sample_batch(self) -> Any:
        inputs, targets = self.batch_sampler(self.generator)
        return inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def segments(self) -> list[tuple[str, int]]:
        """The module's parameters by their ``named_parameters`` names."""
        return [(name, math.prod(shape)) for name, shape in zip(self.names, self.shapes, strict=True)]

    def to(self, device: torch.device | str) -> Problem:
        self.device = torch.device(device)
        self.module.to(self.device)
        self.theta0 = self.theta0.to(self.device)
        return self


class ModuleTask(Task):
    """A task from a user's model factory, loss and data sampler.

    Args:
        name: a name for logs and model cards.
        model_factory: ``generator -> nn.Module``, a freshly initialised model per problem.
        loss_fn: ``(outputs, targets) -> scalar loss``.
        batch_sampler: ``generator -> (inputs, targets)``, the next minibatch.
        vectorize: evaluate several problems (``problems(seeds)``, a meta-batch) in one ``torch.func.vmap`` call
            (:class:`StackedModuleProblems`); for models that vmap can batch (no in-place buffer updates such as
            batch norm's running statistics, no ``nn.GRU``/``nn.LSTM``).
    """

    def __init__(
        self,
        name: str,
        model_factory: Callable[[torch.Generator], nn.Module],
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch_sampler: Callable[[torch.Generator], tuple[Tensor, Tensor]],
        *,
        vectorize: bool = False,
    ) -> None:
        self.name, self.model_factory, self.loss_fn, self.batch_sampler = name, model_factory, loss_fn, batch_sampler
        self.vectorize = vectorize

    def problem(self, seed: int) -> Problem:
        generator = torch.Generator().manual_seed(seed)
        return ModuleProblem(self.model_factory(generator), self.loss_fn, self.batch_sampler, generator)

    def problems(self, seeds: Sequence[int]) -> Problem:
        if self.vectorize and len(seeds) > 1:
            return StackedModuleProblems([self.problem(seed) for seed in seeds])
        return super().problems(seeds)


class StackedModuleProblems(ConcatenatedProblems):
    """Problems of one :class:`ModuleTask` (one architecture) side by side, as :class:`ConcatenatedProblems` (the
    same parameters, minibatches and summed loss), their losses computed by one vmapped call
    (``torch.func.vmap`` over the stacked parameters and minibatches) instead of one call per problem."""

    def __init__(self, problems: list[ModuleProblem]) -> None:
        super().__init__(problems)
        first = problems[0]
        self.module, self.loss_fn, self.names, self.shapes = first.module, first.loss_fn, first.names, first.shapes

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        count = len(self.parts)
        chunks = params.view(count, -1).split([math.prod(shape) for shape in self.shapes], dim=1)
        named = {name: chunk.reshape(count, *shape) for name, chunk, shape in zip(self.names, chunks, self.shapes)}
        inputs, targets = (torch.stack(part) for part in zip(*batch, strict=True))

        def one_loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return self.loss_fn(functional_call(self.module, weights, (x,)), y)

        return torch.func.vmap(one_loss, randomness="different")(named, inputs, targets).sum()


def _init_normal_(module: nn.Module, std: float, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def _seeded_default_init(build: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """``build()`` with PyTorch's default initialisation, drawn from a seed taken from ``generator`` (the global
    random state is left as it was)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mnist_mlp_task(
    name: str = "mnist-mlp",
    *,
    hidden: Sequence[int] = (20,),
    activation: type[nn.Module] = nn.Sigmoid,
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
    dataset: str = "mnist",
    layernorm: bool = False,
    init_std: float | None = 0.01,
    examples: int | None = None,
) -> ModuleTask:
    """The paper's MNIST MLP (section 3.2): hidden layers of sigmoid units, cross-entropy, minibatches of 128,
    weights and biases initialised N(0, 0.01^2) as in the original implementation, pixels in [0, 1].

    ``dataset`` may be any IDX dataset (``fashion-mnist``); ``layernorm`` puts a ``LayerNorm`` before each hidden
    activation; ``init_std=None`` keeps PyTorch's default initialisation (seeded by the problem); ``examples=N``
    trains on the first ``N`` images only, a set the model fits to zero loss.  ``hidden=()`` is multinomial
    logistic regression."""
    images, labels = load_image_classification(dataset, split, data_dir)
    flat_images = images.reshape(len(images), -1)

    def build() -> nn.Module:
        return _mlp(flat_images.shape[1], hidden, activation, layernorm=layernorm)

    def model_factory(generator: torch.Generator) -> nn.Module:
        if init_std is None:
            return _seeded_default_init(build, generator)
        return _init_normal_(build(), init_std, generator)

    return ModuleTask(
        name,
        model_factory,
        nn.functional.cross_entropy,
        _classification_sampler(flat_images, labels, batch_size, examples),
        vectorize=True,
    )


def _mlp(
    in_features: int, hidden: Sequence[int], activation: type[nn.Module], *, layernorm: bool = False, classes: int = 10
) -> nn.Sequential:
    """Linear layers of ``hidden`` widths, each followed by (``LayerNorm`` and) ``activation``, then a linear
    read-out to ``classes``."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers.append(nn.Linear(width, units))
        if layernorm:
            layers.append(nn.LayerNorm(units))
        layers.append(activation())
        width = units
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def _classification_sampler(
    inputs: Tensor, labels: Tensor, batch_size: int, examples: int | None = None
) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """Minibatches drawn with replacement from the first ``examples`` pairs (all if ``None``)."""
    inputs, labels = inputs[:examples], labels[:examples]

    def batch_sampler(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(inputs), (batch_size,), generator=generator)
        return inputs[index], labels[index]

    return batch_sampler


def _small_convnet(in_channels: int, side: int, channels: Sequence[int], classes: int = 10) -> nn.Module:
    """3x3 convolutions of stride 2 with ReLU, then one linear layer on the flattened features."""
    layers: list[nn.Module] = []
    width = in_channels
    for out in channels:
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
        width, side = out, (side + 1) // 2
    layers += [nn.Flatten(), nn.Linear(width * side * side, classes)]
    return nn.Sequential(*layers)


def mnist_conv_task(
    name: str = "mnist-conv",
    *,
    channels: Sequence[int] = (8, 16),
    batch_size: int = 64,
    split: str = "train",
    data_dir: str | None = None,
    dataset: str = "mnist",
    examples: int | None = None,
) -> ModuleTask:
    """A small conv net on an IDX dataset (28x28 grey images in [0, 1]): two stride-2 3x3 convolutions with ReLU,
    then a linear layer; PyTorch's default initialisation, seeded by the problem; cross-entropy.  ``examples=N``
    trains on the first ``N`` images only."""
    images, labels = load_image_classification(dataset, split, data_dir)
    inputs = images.unsqueeze(1)
    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(lambda: _small_convnet(1, 28, channels), generator),
        nn.functional.cross_entropy,
        _classification_sampler(inputs, labels, batch_size, examples),
        vectorize=True,
    )


def cifar_conv_task(
    name: str = "cifar-conv",
    *,
    channels: Sequence[int] = (16, 32),
    batch_size: int = 64,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """A small conv net on the CIFAR-10 subset (4,000 train / 1,000 test images, pixels mapped to ``(x - 0.5) /
    0.25``): two stride-2 3x3 convolutions with ReLU, then a linear layer; PyTorch's default initialisation."""
    images, labels = load_cifar10_subset(split, data_dir)
    inputs = (images - 0.5) / 0.25
    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(lambda: _small_convnet(3, 32, channels), generator),
        nn.functional.cross_entropy,
        _classification_sampler(inputs, labels, batch_size),
        vectorize=True,
    )


class OffsetBatchNorm(nn.Module):
    """Batch normalisation with a learned offset and no scale (Sonnet's ``BatchNorm`` default, which the original
    implementation uses), always with the statistics of the minibatch it is applied to: no running statistics are
    kept, so a problem is a pure function of its parameters and minibatch and ``functional_call`` carries no state
    across steps (training and evaluation alike normalise by the batch)."""

    def __init__(self, features: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.batch_norm(x, None, None, bias=self.offset, training=True, eps=self.eps)


class PaperCifarNet(nn.Module):
    """The conv net of the paper's CIFAR-10 experiment (section 3.3), as the original implementation builds it:
    three 5x5 convolutions of ``channels`` ('same' padding, with biases), each followed by batch normalisation,
    ReLU and 2x2 max-pooling; a fully-connected layer of ``hidden`` units with batch normalisation and ReLU; a
    linear read-out to ``classes``.  Parameter names: ``conv.{i}.weight``, ``conv.{i}.bias``,
    ``conv_norm.{i}.offset``, ``hidden.weight``, ``hidden.bias``, ``hidden_norm.offset``, ``readout.weight``,
    ``readout.bias`` (:data:`NETWORK_RULES` ``"paper-cifar"`` gives the convolution weights their own network)."""

    def __init__(self, classes: int = 10, channels: Sequence[int] = (16, 16, 16), hidden: int = 32) -> None:
        super().__init__()
        widths = [3, *channels]
        self.conv = nn.ModuleList(nn.Conv2d(a, b, 5, padding=2) for a, b in zip(widths, widths[1:]))
        self.conv_norm = nn.ModuleList(OffsetBatchNorm(width) for width in channels)
        side = 32 // 2 ** len(channels)
        self.hidden = nn.Linear(channels[-1] * side * side, hidden)
        self.hidden_norm = OffsetBatchNorm(hidden)
        self.readout = nn.Linear(hidden, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for conv, norm in zip(self.conv, self.conv_norm, strict=True):
            x = nn.functional.max_pool2d(torch.relu(norm(conv(x))), 2)
        return self.readout(torch.relu(self.hidden_norm(self.hidden(x.flatten(1)))))


CIFAR_HELD_OUT_LABELS = (5, 6, 7, 8, 9)
"""The labels of ``paper-cifar-sub``: those neither CIFAR-5 (labels 0-4) nor CIFAR-2 (labels 0, 1) tests on."""


def paper_cifar_task(
    name: str = "paper-cifar10",
    *,
    labels: Sequence[int] = tuple(range(10)),
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """The paper's CIFAR-10 problem (section 3.3, figure 7) on the CIFAR-10 subset: :class:`PaperCifarNet`,
    minibatches of 128, cross-entropy, pixels in [0, 1], weights and biases initialised N(0, 0.01^2) as in the
    original implementation (offsets 0).

    ``labels`` keeps only the images of those labels, relabelled ``0 .. k-1`` in that order, with a ``k``-way
    read-out: the paper's CIFAR-5 and CIFAR-2 are the first 5 and first 2 labels; its LSTM-sub, "only trained on
    the held-out labels", is meta-trained here on :data:`CIFAR_HELD_OUT_LABELS` (a 5-way problem on the labels
    that neither CIFAR-5 nor CIFAR-2 uses) and tested on CIFAR-5 and CIFAR-2."""
    images, all_labels = load_cifar10_subset(split, data_dir)
    keep = torch.isin(all_labels, torch.tensor(list(labels), dtype=all_labels.dtype))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(labels)] = torch.arange(len(labels))

    def model_factory(generator: torch.Generator) -> nn.Module:
        model = _init_normal_(PaperCifarNet(classes=len(labels)), 0.01, generator)
        with torch.no_grad():
            for norm in [*model.conv_norm, model.hidden_norm]:
                norm.offset.zero_()
        return model

    return ModuleTask(
        name,
        model_factory,
        nn.functional.cross_entropy,
        _classification_sampler(images[keep], relabel[all_labels[keep]], batch_size),
        vectorize=True,
    )


NETWORK_RULES: dict[str, NetworkRule] = {
    "paper-cifar": NetworkRule((("conv.*.weight", "conv"),), "fc"),
}
"""Named rules for ``--network-rule``.  ``paper-cifar``: the paper's CIFAR-10 optimizer (section 3.3) as the
original implementation's ``cifar-multi`` splits it: the convolution weights of :class:`PaperCifarNet` on the
``conv`` network; the convolutions' biases, the batch-norm offsets and the fully-connected layers on ``fc``."""


def mnist1d_mlp_task(
    name: str = "mnist1d-mlp",
    *,
    hidden: Sequence[int] = (100, 100),
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """A ReLU MLP on MNIST-1D (sequences of length 40, 10 classes); PyTorch's default initialisation."""
    x, y = load_mnist1d(split, data_dir)

    def build() -> nn.Module:
        return _mlp(x.shape[1], hidden, nn.ReLU)

    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(build, generator),
        nn.functional.cross_entropy,
        _classification_sampler(x, y, batch_size),
        vectorize=True,
    )


class CharRNN(nn.Module):
    """A character-level language model: embedding, one GRU layer, a linear readout to the vocabulary."""

    def __init__(self, vocabulary_size: int, embedding: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary_size, embedding)
        self.rnn = nn.GRU(embedding, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, vocabulary_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of shape ``(batch, length, vocabulary)`` for the next character at each position."""
        outputs, _ = self.rnn(self.embed(tokens))
        return self.readout(outputs)


class CharAttention(nn.Module):
    """A character-level language model: embedding plus learned positions, ``layers`` causal pre-norm transformer
    blocks (multi-head self-attention and an MLP of twice the width), a linear readout to the vocabulary."""

    def __init__(self, vocabulary_size: int, length: int, width: int = 32, heads: int = 2, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary_size, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.readout = nn.Linear(width, vocabulary_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of shape ``(batch, length, vocabulary)`` for the next character at each position."""
        length = tokens.shape[1]
        hidden = self.embed(tokens) + self.position[:length]
        for block in self.blocks:
            hidden = block(hidden, src_mask=self.causal[:length, :length], is_causal=True)
        return self.readout(hidden)


def _sequence_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def char_rnn_task(
    name: str = "char-rnn",
    *,
    sequence_length: int = 32,
    batch_size: int = 32,
    hidden: int = 64,
    embedding: int = 16,
    architecture: str = "gru",
    heads: int = 2,
    layers: int = 1,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """A tiny language model on tiny-shakespeare characters (first 90% train, last 10% test): minibatches of
    ``batch_size`` random windows of ``sequence_length`` characters, next-character cross-entropy.  ``architecture``
    ``"gru"``: :class:`CharRNN`; ``"attention"``: :class:`CharAttention` of width ``hidden`` with ``layers`` blocks
    of ``heads`` heads."""
    tokens, vocabulary = load_text(split, data_dir)
    if len(tokens) <= sequence_length:
        raise ValueError(f"the {split} text has {len(tokens)} characters, fewer than a window of {sequence_length + 1}")
    offsets = torch.arange(sequence_length + 1)

    def batch_sampler(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(tokens) - sequence_length, (batch_size, 1), generator=generator)
        windows = tokens[starts + offsets]
        return windows[:, :-1], windows[:, 1:]

    if architecture == "gru":

        def build() -> nn.Module:
            return CharRNN(len(vocabulary), embedding, hidden)
    elif architecture == "attention":

        def build() -> nn.Module:
            return CharAttention(len(vocabulary), sequence_length, width=hidden, heads=heads, layers=layers)
    else:
        raise ValueError(f"architecture must be 'gru' or 'attention', got {architecture!r}")
    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(build, generator),
        _sequence_cross_entropy,
        batch_sampler,
        vectorize=architecture == "attention",  # vmap has no batching rule for nn.GRU
    )


class IllConditionedQuadraticProblems(Problem):
    """``f(theta) = 1/2 (theta - c)^T A (theta - c)`` with ``A = Q diag(lambda) Q^T``, ``k`` draws side by side."""

    def __init__(self, A: Tensor, center: Tensor, theta0: Tensor) -> None:
        self.A, self.center, self.theta0 = A, center, theta0
        self.num_problems = A.shape[0]

    def init_params(self) -> Tensor:
        return self.theta0.reshape(-1).clone()

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        delta = (params.view(self.num_problems, -1) - self.center).unsqueeze(-1)
        return 0.5 * (delta.transpose(1, 2) @ self.A @ delta).sum()

    def to(self, device: torch.device | str) -> Problem:
        self.A, self.center, self.theta0 = self.A.to(device), self.center.to(device), self.theta0.to(device)
        return self


class IllConditionedQuadraticTask(Task):
    """Quadratics of a chosen condition number: eigenvalues log-spaced from ``1/kappa`` to 1, ``kappa`` drawn
    log-uniformly from ``condition_range`` per problem, eigenvectors a uniformly random orthogonal matrix (QR of a
    Gaussian with the sign fix), optimum ``c`` and start ``theta_0`` standard normal."""

    default_meta_batch_size = 128

    def __init__(
        self, dims: int = 20, condition_range: tuple[float, float] = (10.0, 1e4), name: str = "quadratic-ill"
    ) -> None:
        self.dims, self.condition_range, self.name = dims, condition_range, name

    def problem(self, seed: int) -> Problem:
        return self.problems([seed])

    def draw(self, seed: int) -> tuple[Tensor, Tensor, Tensor, float]:
        """``(A, c, theta_0, kappa)`` of problem ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        low, high = (math.log(v) for v in self.condition_range)
        kappa = math.exp(low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item())
        q, r = torch.linalg.qr(torch.randn(self.dims, self.dims, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        eigenvalues = torch.logspace(-math.log10(kappa), 0.0, self.dims, dtype=torch.float64)
        A = (q * eigenvalues) @ q.T
        A = 0.5 * (A + A.T)
        center = torch.randn(self.dims, generator=gen)
        theta0 = torch.randn(self.dims, generator=gen)
        return A.float(), center, theta0, kappa

    def problems(self, seeds: Sequence[int]) -> Problem:
        draws = [self.draw(seed)[:3] for seed in seeds]
        A, center, theta0 = (torch.stack(parts) for parts in zip(*draws, strict=True))
        return IllConditionedQuadraticProblems(A, center, theta0)


class RosenbrockProblems(Problem):
    """``f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``, the chained Rosenbrock function, ``k`` starts side
    by side: a curved narrow valley, minimum 0 at ``x = 1``."""

    def __init__(self, theta0: Tensor) -> None:
        self.theta0 = theta0
        self.num_problems = theta0.shape[0]

    def init_params(self) -> Tensor:
        return self.theta0.reshape(-1).clone()

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        x = params.view(self.num_problems, -1)
        return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum()

    def to(self, device: torch.device | str) -> Problem:
        self.theta0 = self.theta0.to(device)
        return self


class RosenbrockTask(Task):
    """Chained Rosenbrock functions of ``dims`` variables from starts uniform in ``[-2, 2]^dims``."""

    def __init__(self, dims: int = 10, name: str = "rosenbrock") -> None:
        self.dims, self.name = dims, name

    def problem(self, seed: int) -> Problem:
        return self.problems([seed])

    def problems(self, seeds: Sequence[int]) -> Problem:
        starts = [4 * torch.rand(self.dims, generator=torch.Generator().manual_seed(seed)) - 2 for seed in seeds]
        return RosenbrockProblems(torch.stack(starts))


class TeacherStudentTask(Task):
    """Regression on a random teacher: inputs ``x ~ N(0, I_d)``, targets ``y = teacher(x) + 0.1 noise`` with a tanh
    MLP teacher (``d -> 64 -> 1``, weights ``N(0, 1/fan_in)``) drawn per problem, and a ReLU MLP student (two hidden
    layers of ``hidden`` units, PyTorch's default initialisation) trained on the squared error, minibatches of 128."""

    def __init__(
        self, inputs: int = 20, hidden: int = 64, batch_size: int = 128, name: str = "teacher-student"
    ) -> None:
        self.inputs, self.hidden, self.batch_size, self.name = inputs, hidden, batch_size, name

    def problem(self, seed: int) -> Problem:
        generator = torch.Generator().manual_seed(seed)
        w1 = torch.randn(self.inputs, 64, generator=generator) / math.sqrt(self.inputs)
        w2 = torch.randn(64, 1, generator=generator) / 8.0

        def batch_sampler(generator: torch.Generator) -> tuple[Tensor, Tensor]:
            x = torch.randn(self.batch_size, self.inputs, generator=generator)
            return x, torch.tanh(x @ w1) @ w2 + 0.1 * torch.randn(self.batch_size, 1, generator=generator)

        student = _seeded_default_init(
            lambda: _mlp(self.inputs, (self.hidden, self.hidden), nn.ReLU, classes=1), generator
        )
        return ModuleProblem(student, nn.functional.mse_loss, batch_sampler, generator)


def mnist_autoencoder_task(
    name: str = "mnist-autoencoder",
    *,
    hidden: Sequence[int] = (128, 32, 128),
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """An MNIST autoencoder: a ReLU MLP of ``hidden`` widths from the pixels back to the pixels, each pixel's
    reconstruction scored by binary cross-entropy on its logit; PyTorch's default initialisation."""
    images, _ = load_image_classification("mnist", split, data_dir)
    flat = images.reshape(len(images), -1)

    def batch_sampler(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(flat), (batch_size,), generator=generator)
        return flat[index], flat[index]

    def build() -> nn.Module:
        return _mlp(flat.shape[1], hidden, nn.ReLU, classes=flat.shape[1])

    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(build, generator),
        nn.functional.binary_cross_entropy_with_logits,
        batch_sampler,
        vectorize=True,
    )


def mnist1d_conv_task(
    name: str = "mnist1d-conv",
    *,
    channels: Sequence[int] = (16, 32),
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
) -> ModuleTask:
    """A 1-D conv net on MNIST-1D: convolutions of width 5 and stride 2 with ReLU, then a linear layer; PyTorch's
    default initialisation."""
    x, y = load_mnist1d(split, data_dir)

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Unflatten(1, (1, x.shape[1]))]
        width, length = 1, x.shape[1]
        for out in channels:
            layers += [nn.Conv1d(width, out, 5, stride=2, padding=2), nn.ReLU()]
            width, length = out, (length + 1) // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * length, 10))

    return ModuleTask(
        name,
        lambda generator: _seeded_default_init(build, generator),
        nn.functional.cross_entropy,
        _classification_sampler(x, y, batch_size),
        vectorize=True,
    )


NEURAL_ART_WEIGHTS = (1.0, 1.0, 3.0)
"""``(alpha, beta, gamma)`` of the Neural Art loss (paper section 3.4).  The content and style terms are relative
errors (:func:`~learned_torch_optim.meta.art.content_loss`, :func:`~learned_torch_optim.meta.art.style_loss`) and
the regulariser is 1/3 on the white-noise start, so that the three weighted terms are of similar size there
(docs/paper.md)."""


class NeuralArtProblem(Problem):
    """One Neural Art problem (paper section 3.4): the optimizee is an image ``theta`` of shape ``(3, S, S)`` in
    [0, 1] pixel units, unconstrained, and ``f(theta) = alpha L_content(c, theta) + beta L_style(s, theta) + gamma
    L_reg(theta)``: the content term compares the features of ``theta`` with those of the content image ``c`` at
    :data:`~learned_torch_optim.meta.art.CONTENT_LAYER`, the style term the Gram matrices of ``theta``'s features
    with the style image ``s``'s at :data:`~learned_torch_optim.meta.art.STYLE_LAYERS`, the regulariser is the
    squared total variation of ``theta``.  Deterministic: no minibatches.  Its one parameter is named ``image``;
    ``content`` is the content image ``(3, S, S)``."""

    def __init__(
        self, features: ArtFeatureNet, content: Tensor, style: Tensor, theta0: Tensor, weights: Sequence[float]
    ) -> None:
        self.features, self.content, self.theta0, self.weights = features, content, theta0, tuple(weights)
        with torch.no_grad():
            self.content_target = features(content[None], (CONTENT_LAYER,))[CONTENT_LAYER]
            found = features(style[None], STYLE_LAYERS)
            self.style_targets = [gram_matrix(found[layer]) for layer in STYLE_LAYERS]

    def init_params(self) -> Tensor:
        return self.theta0.reshape(-1).clone()

    def terms(self, params: Tensor) -> dict[str, Tensor]:
        """The unweighted terms at ``params``: ``content``, ``style`` and ``reg``."""
        image = params.view(1, *self.theta0.shape)
        found = self.features(image, (*STYLE_LAYERS, CONTENT_LAYER))
        return {
            "content": content_loss(found[CONTENT_LAYER], self.content_target),
            "style": style_loss([gram_matrix(found[layer]) for layer in STYLE_LAYERS], self.style_targets),
            "reg": total_variation(image),
        }

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        terms = self.terms(params)
        alpha, beta, gamma = self.weights
        return alpha * terms["content"] + beta * terms["style"] + gamma * terms["reg"]

    def segments(self) -> list[tuple[str, int]]:
        return [("image", self.theta0.numel())]

    def image(self, params: Tensor) -> Tensor:
        """``params`` as the image ``(3, S, S)`` it is, clamped to [0, 1] for display
        (:func:`~learned_torch_optim.meta.art.save_png`)."""
        return params.detach().view(self.theta0.shape).clamp(0, 1)

    def to(self, device: torch.device | str) -> Problem:
        if any(param.device != torch.device(device) for param in self.features.parameters()):
            # a copy: the task and its other problems share the network, and nn.Module.to moves it in place
            self.features = copy.deepcopy(self.features).to(device)
        self.content, self.theta0 = self.content.to(device), self.theta0.to(device)
        self.content_target = self.content_target.to(device)
        self.style_targets = [target.to(device) for target in self.style_targets]
        return self


class NeuralArtTask(Task):
    """The paper's Neural Art family (section 3.4): one problem per content image, all with one style image.

    Problem ``seed`` takes the content image its seed picks from ``split`` of the CIFAR-10 subset (train: 4,000
    images, test: 1,000, held out), upsampled from 32x32 to ``size`` x ``size``, and starts from white noise,
    ``theta_0 ~ U(0, 1)`` per pixel (the start of Gatys et al.; the paper does not state its own).  ``style`` is a
    name of :data:`~learned_torch_optim.meta.art.STYLE_IMAGES` (scikit-learn's sample photographs) or an image
    ``(3, H, W)`` in [0, 1]; its central square is resized to ``size``.  ``features`` is the feature network, or the
    folder to load it from (by default the shipped one, :func:`~learned_torch_optim.meta.art.load_art_features`);
    both are loaded at the first problem.  ``weights`` are ``(alpha, beta, gamma)``."""

    def __init__(
        self,
        size: int = 64,
        style: str | Tensor = TRAINING_STYLE,
        split: str = "train",
        *,
        features: ArtFeatureNet | str | os.PathLike | None = None,
        data_dir: str | None = None,
        weights: Sequence[float] = NEURAL_ART_WEIGHTS,
        name: str = "neural-art-64",
    ) -> None:
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        if len(weights) != 3:
            raise ValueError(f"weights must be (alpha, beta, gamma), got {weights!r}")
        if isinstance(style, Tensor) and (style.dim() != 3 or style.shape[0] != 3):
            raise ValueError(f"a style image must have shape (3, H, W), got {tuple(style.shape)}")
        self.size, self.weights, self.name = size, tuple(weights), name
        self.contents = load_cifar10_subset(split, data_dir)[0]
        self.features_source, self.style_source = features, style

    @functools.cached_property
    def features(self) -> ArtFeatureNet:
        """The feature network, loaded at the first problem (so that a task is built without it, e.g. to list the
        files it reads)."""
        source = self.features_source
        return source if isinstance(source, ArtFeatureNet) else load_art_features(source)

    @functools.cached_property
    def style(self) -> Tensor:
        """The style image at the problems' size, ``(3, size, size)``, loaded at the first problem."""
        image = load_style_image(self.style_source) if isinstance(self.style_source, str) else self.style_source
        return square_resize(image.float(), self.size)

    def problem(self, seed: int) -> Problem:
        generator = torch.Generator().manual_seed(seed)
        index = int(torch.randint(len(self.contents), (1,), generator=generator))
        content = square_resize(self.contents[index], self.size)
        theta0 = torch.rand(3, self.size, self.size, generator=generator)
        return NeuralArtProblem(self.features, content, self.style, theta0, self.weights)


@dataclass(frozen=True)
class BuiltinTask:
    """The declaration of a built-in task: its name, one line for ``learned-torch-optim list``, the factory that
    builds it (called with ``name=``, and ``split=`` and ``data_dir=`` when it reads a dataset), the dataset it
    reads (``None`` for a synthetic task) and the files of the package it reads besides (the Neural Art tasks' feature
    network), which are part of its cache identity."""

    name: str
    description: str
    factory: Callable[..., Task]
    dataset: str | None = None
    package_files: tuple[Path, ...] = ()

    def build(self, split: str, data_dir: str | None) -> Task:
        """The task, reading ``split`` of its dataset from ``data_dir``."""
        if self.dataset is None:
            return self.factory(name=self.name)
        return self.factory(name=self.name, split=split, data_dir=data_dir)

    def data_files(self, split: str) -> list[tuple[str, str]]:
        """The ``(dataset, file name)`` pairs that ``split`` reads."""
        return [] if self.dataset is None else [(self.dataset, f) for f in dataset_files(self.dataset, split)]


ART_FEATURE_FILES = (ART_FEATURES_DIR / "config.json", ART_FEATURES_DIR / "model.safetensors")
"""The shipped feature network that the Neural Art tasks read."""

BUILTIN_TASKS: dict[str, BuiltinTask] = {
    task.name: task
    for task in (
        BuiltinTask(
            "quadratic", "10-d quadratics ||W theta - y||^2 with fresh W, y per problem (paper 3.1)", QuadraticTask
        ),
        BuiltinTask(
            "mnist-mlp",
            "MNIST MLP, one hidden layer of 20 sigmoid units, batch 128 (paper 3.2)",
            mnist_mlp_task,
            "mnist",
        ),
        BuiltinTask(
            "mnist-mlp-40",
            "as mnist-mlp with 40 hidden units (paper figure 4)",
            functools.partial(mnist_mlp_task, hidden=(40,)),
            "mnist",
        ),
        BuiltinTask(
            "mnist-mlp-2layer",
            "as mnist-mlp with two hidden layers of 20 units (paper figure 4)",
            functools.partial(mnist_mlp_task, hidden=(20, 20)),
            "mnist",
        ),
        BuiltinTask(
            "mnist-mlp-relu",
            "as mnist-mlp with ReLU activations (paper figure 4)",
            functools.partial(mnist_mlp_task, activation=nn.ReLU),
            "mnist",
        ),
        BuiltinTask(
            "mlp-tanh",
            "MNIST MLP, one hidden layer of 64 tanh units, PyTorch default init, batch 128",
            functools.partial(mnist_mlp_task, hidden=(64,), activation=nn.Tanh, init_std=None),
            "mnist",
        ),
        BuiltinTask(
            "mlp-tanh-512",
            "as mlp-tanh on the first 512 images of the split: it fits them to zero loss (the end of training)",
            functools.partial(mnist_mlp_task, hidden=(64,), activation=nn.Tanh, init_std=None, examples=512),
            "mnist",
        ),
        BuiltinTask(
            "mlp-gelu",
            "MNIST MLP, two hidden layers of 32 GELU units, PyTorch default init, batch 128",
            functools.partial(mnist_mlp_task, hidden=(32, 32), activation=nn.GELU, init_std=None),
            "mnist",
        ),
        BuiltinTask(
            "mlp-relu-layernorm",
            "MNIST MLP, two hidden layers of 64 units with LayerNorm then ReLU, default init, batch 128",
            functools.partial(mnist_mlp_task, hidden=(64, 64), activation=nn.ReLU, layernorm=True, init_std=None),
            "mnist",
        ),
        BuiltinTask(
            "fashion-mnist-mlp",
            "as mnist-mlp (20 sigmoid units, N(0, 0.01^2) init) on Fashion-MNIST",
            functools.partial(mnist_mlp_task, dataset="fashion-mnist"),
            "fashion-mnist",
        ),
        BuiltinTask(
            "logistic-regression",
            "multinomial logistic regression on MNIST pixels (convex), default init, batch 128",
            functools.partial(mnist_mlp_task, hidden=(), init_std=None),
            "mnist",
        ),
        BuiltinTask(
            "mnist-conv",
            "MNIST conv net: 3x3 stride-2 convs of 8 and 16 channels with ReLU, then linear; batch 64",
            mnist_conv_task,
            "mnist",
        ),
        BuiltinTask(
            "mnist-conv-512",
            "as mnist-conv on the first 512 images of the split: it fits them to zero loss (the end of training)",
            functools.partial(mnist_conv_task, examples=512),
            "mnist",
        ),
        BuiltinTask(
            "cifar-conv",
            "CIFAR-10 subset (4,000 images) conv net: 3x3 stride-2 convs of 16 and 32 channels, linear; batch 64",
            cifar_conv_task,
            "cifar10-subset",
        ),
        BuiltinTask(
            "paper-cifar10",
            "the paper's CIFAR-10 net on the subset: three 5x5 convs of 16 with batch norm and max-pooling, FC 32; "
            "batch 128 (paper 3.3)",
            paper_cifar_task,
            "cifar10-subset",
        ),
        BuiltinTask(
            "paper-cifar5",
            "as paper-cifar10 on the images of labels 0-4, a 5-way read-out (paper 3.3, CIFAR-5)",
            functools.partial(paper_cifar_task, labels=(0, 1, 2, 3, 4)),
            "cifar10-subset",
        ),
        BuiltinTask(
            "paper-cifar2",
            "as paper-cifar10 on the images of labels 0 and 1, a 2-way read-out (paper 3.3, CIFAR-2)",
            functools.partial(paper_cifar_task, labels=(0, 1)),
            "cifar10-subset",
        ),
        BuiltinTask(
            "paper-cifar-sub",
            "as paper-cifar10 on the held-out labels 5-9, 5-way: meta-train LSTM-sub here, test on paper-cifar5/2",
            functools.partial(paper_cifar_task, labels=CIFAR_HELD_OUT_LABELS),
            "cifar10-subset",
        ),
        BuiltinTask(
            "mnist1d-mlp",
            "MNIST-1D MLP, two hidden layers of 100 ReLU units, default init, batch 128",
            mnist1d_mlp_task,
            "mnist1d",
        ),
        BuiltinTask(
            "char-rnn",
            "tiny-shakespeare character GRU LM: embedding 16, hidden 64, windows of 32 chars, batch 32",
            char_rnn_task,
            "tinyshakespeare",
        ),
        BuiltinTask(
            "char-attention",
            "tiny-shakespeare character LM: one causal transformer block of width 32, 2 heads, batch 32",
            functools.partial(char_rnn_task, architecture="attention", hidden=32),
            "tinyshakespeare",
        ),
        BuiltinTask(
            "char-attention-16",
            "as char-attention with width 16 and windows of 16 chars (for meta-training; char-attention is held out)",
            functools.partial(char_rnn_task, architecture="attention", hidden=16, sequence_length=16),
            "tinyshakespeare",
        ),
        BuiltinTask(
            "char-attention-128",
            "as char-attention with width 128 and windows of 16 chars (for meta-training: a wide block, whose "
            "LayerNorm and bias coordinates take only small steps)",
            functools.partial(char_rnn_task, architecture="attention", hidden=128, sequence_length=16),
            "tinyshakespeare",
        ),
        BuiltinTask(
            "quadratic-ill",
            "20-d quadratics 1/2 (x-c)^T A (x-c), condition number log-uniform in [10, 1e4], random basis",
            IllConditionedQuadraticTask,
        ),
        BuiltinTask(
            "char-transformer",
            "tiny-shakespeare character LM: 8 causal transformer blocks of width 128, 4 heads, windows of 32 chars, "
            "batch 8 (1.07M parameters)",
            functools.partial(
                char_rnn_task,
                architecture="attention",
                hidden=128,
                heads=4,
                layers=8,
                sequence_length=32,
                batch_size=8,
            ),
            "tinyshakespeare",
        ),
        BuiltinTask(
            "mnist-autoencoder",
            "MNIST autoencoder: ReLU MLP 784-128-32-128-784, per-pixel binary cross-entropy, batch 128",
            mnist_autoencoder_task,
            "mnist",
        ),
        BuiltinTask(
            "mnist1d-conv",
            "MNIST-1D conv net: width-5 stride-2 convs of 16 and 32 channels with ReLU, then linear; batch 128",
            mnist1d_conv_task,
            "mnist1d",
        ),
        BuiltinTask(
            "teacher-student",
            "regression on a random tanh teacher (20 inputs, noise 0.1): a ReLU MLP 20-64-64-1, squared error",
            TeacherStudentTask,
        ),
        BuiltinTask("rosenbrock", "10-d chained Rosenbrock functions from starts uniform in [-2, 2]", RosenbrockTask),
        BuiltinTask(
            "neural-art-64",
            "Neural Art (paper 3.4): a 64x64 image styled as china.jpg, content a CIFAR-10 image, white-noise start",
            functools.partial(NeuralArtTask, size=64, style=TRAINING_STYLE),
            "cifar10-subset",
            ART_FEATURE_FILES,
        ),
        BuiltinTask(
            "neural-art-128",
            "as neural-art-64 at 128x128 (the paper's test at a higher resolution)",
            functools.partial(NeuralArtTask, size=128, style=TRAINING_STYLE),
            "cifar10-subset",
            ART_FEATURE_FILES,
        ),
        BuiltinTask(
            "neural-art-64-new-style",
            "as neural-art-64 with the style flower.jpg (the paper's test with a new style)",
            functools.partial(NeuralArtTask, size=64, style=NEW_STYLE),
            "cifar10-subset",
            ART_FEATURE_FILES,
        ),
    )
}
"""The built-in tasks, one declaration each, in the order ``learned-torch-optim list`` shows them."""

TASK_DESCRIPTIONS: dict[str, str] = {name: task.description for name, task in BUILTIN_TASKS.items()}
"""Built-in task name -> its one-line description."""


def _parts(name: str) -> list[str]:
    """The task names of a comma-separated mixture."""
    return [part.strip() for part in name.split(",")]


def _builtin(name: str) -> BuiltinTask:
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[name]


def task_data_files(name: str, split: str) -> list[tuple[str, str]]:
    """The ``(dataset, file name)`` pairs that built-in task ``name`` (or a comma-separated mixture) reads for
    ``split`` (empty for synthetic tasks), e.g. to key caches on the data's checksums."""
    return list(dict.fromkeys(f for part in _parts(name) for f in _builtin(part).data_files(split)))


def task_package_files(name: str) -> list[Path]:
    """The files of the package that built-in task ``name`` (or a mixture) reads besides its data (the feature
    network of the Neural Art tasks): a retrained network changes the problems, so caches are keyed on these too."""
    return list(dict.fromkeys(f for part in _parts(name) for f in _builtin(part).package_files))


def get_task(name: str, *, split: str = "train", data_dir: str | None = None) -> Task:
    """A built-in task by name (see :data:`BUILTIN_TASKS`); dataset tasks read ``split`` from ``data_dir``.
    A comma-separated list of names is their :class:`MixtureTask`."""
    if "," in name:
        return MixtureTask([get_task(part, split=split, data_dir=data_dir) for part in _parts(name)])
    return _builtin(name).build(split, data_dir)
