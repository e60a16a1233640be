"""Learned optimizers for PyTorch: the coordinatewise LSTM of Andrychowicz et al. (2016) as a torch.optim drop-in."""

from importlib.metadata import PackageNotFoundError, version

from .network import CoordinatewiseLSTM, NetworkConfig
from .optimizer import LearnedOptimizer
from .weight_set import NetworkRule, WeightSet
from .weights import WeightsError, list_pretrained, load_weight_set, load_weights, resolve_weights

try:
    __version__ = version("learned-torch-optim")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0.0.0+source"

__all__ = [
    "CoordinatewiseLSTM",
    "LearnedOptimizer",
    "NetworkConfig",
    "NetworkRule",
    "WeightSet",
    "WeightsError",
    "list_pretrained",
    "load_weight_set",
    "load_weights",
    "resolve_weights",
    "__version__",
]
