import pytest
import torch

from learned_torch_optim import CoordinatewiseLSTM


@pytest.fixture
def network() -> CoordinatewiseLSTM:
    """A randomly initialised paper-shaped network (tests never rely on packaged weights)."""
    torch.manual_seed(1234)
    return CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocessing="log_sign", output_scale=0.1)
