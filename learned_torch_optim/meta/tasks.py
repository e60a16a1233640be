"""Tasks: families of optimisation problems to meta-train and evaluate on.

A :class:`Problem` is one optimisation problem: flat initial parameters, a loss of ``(parameters, batch)`` and a
minibatch sampler.  A :class:`Task` draws problems from a seed, so every optimizer can be run on the same problems
and minibatches.  :class:`ModuleTask` builds a task from any ``nn.Module`` factory with
``torch.func.functional_call``, so users meta-train on their own problem family.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .data import load_image_classification


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

    def to(self, device: torch.device | str) -> Problem:
        self.parts = [p.to(device) for p in self.parts]
        return self


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
    """

    def __init__(
        self,
        name: str,
        model_factory: Callable[[torch.Generator], nn.Module],
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch_sampler: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    ) -> None:
        self.name, self.model_factory, self.loss_fn, self.batch_sampler = name, model_factory, loss_fn, batch_sampler

    def problem(self, seed: int) -> Problem:
        generator = torch.Generator().manual_seed(seed)
        return ModuleProblem(self.model_factory(generator), self.loss_fn, self.batch_sampler, generator)


def _init_normal_(module: nn.Module, std: float, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def mnist_mlp_task(
    name: str = "mnist-mlp",
    *,
    hidden: Sequence[int] = (20,),
    activation: type[nn.Module] = nn.Sigmoid,
    batch_size: int = 128,
    split: str = "train",
    data_dir: str | None = None,
    dataset: str = "mnist",
) -> ModuleTask:
    """The paper's MNIST MLP (section 3.2): hidden layers of sigmoid units, cross-entropy, minibatches of 128,
    weights and biases initialised N(0, 0.01^2) as in the original implementation, pixels in [0, 1]."""
    images, labels = load_image_classification(dataset, split, data_dir)
    flat_images = images.reshape(len(images), -1)

    def model_factory(generator: torch.Generator) -> nn.Module:
        layers: list[nn.Module] = []
        width = flat_images.shape[1]
        for units in hidden:
            layers += [nn.Linear(width, units), activation()]
            width = units
        layers.append(nn.Linear(width, 10))
        return _init_normal_(nn.Sequential(*layers), 0.01, generator)

    def batch_sampler(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(flat_images), (batch_size,), generator=generator)
        return flat_images[index], labels[index]

    return ModuleTask(name, model_factory, nn.functional.cross_entropy, batch_sampler)


_MNIST_VARIANTS: dict[str, dict[str, Any]] = {
    "mnist-mlp": {},
    "mnist-mlp-40": {"hidden": (40,)},
    "mnist-mlp-2layer": {"hidden": (20, 20)},
    "mnist-mlp-relu": {"activation": nn.ReLU},
}

TASK_DESCRIPTIONS = {
    "quadratic": "10-d quadratics ||W theta - y||^2 with fresh W, y per problem (paper 3.1)",
    "mnist-mlp": "MNIST MLP, one hidden layer of 20 sigmoid units, batch 128 (paper 3.2)",
    "mnist-mlp-40": "as mnist-mlp with 40 hidden units (paper figure 4)",
    "mnist-mlp-2layer": "as mnist-mlp with two hidden layers of 20 units (paper figure 4)",
    "mnist-mlp-relu": "as mnist-mlp with ReLU activations (paper figure 4)",
}


def get_task(name: str, *, split: str = "train", data_dir: str | None = None) -> Task:
    """A built-in task by name (see :data:`TASK_DESCRIPTIONS`); MNIST tasks read ``split`` from ``data_dir``."""
    if name == "quadratic":
        return QuadraticTask()
    if name in _MNIST_VARIANTS:
        return mnist_mlp_task(name, split=split, data_dir=data_dir, **_MNIST_VARIANTS[name])
    raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASK_DESCRIPTIONS)}")
