"""The learned update rule: a coordinatewise LSTM (Andrychowicz et al., 2016).

One small LSTM is shared by every coordinate of the optimizee; each coordinate carries its own hidden and cell
state.  For a coordinate with gradient ``g_t`` and state ``s_t`` the rule is (paper, eq. 3 and section 2.1)::

    x_t            = preprocess(g_t)                       # Appendix A, or the identity
    (o_t, s_{t+1}) = LSTM(x_t, s_t; phi)                  # num_layers stacked LSTM cells
    u_t            = output_scale * (w . o_t + b)         # linear read-out of the top layer
    theta_{t+1}    = theta_t + u_t                        # eq. 1 (done by the optimizer)

With ``num_layers == 0`` there is no LSTM and the rule is the linear map ``u_t = output_scale * (w . x_t + b)``.

This module is the single definition of the rule: :class:`learned_torch_optim.LearnedOptimizer` runs it under
``torch.no_grad()`` and the meta-trainer differentiates through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

PREPROCESSINGS = ("log_sign", "identity")

_MODEL_CARD = """
---
{{ card_data }}
---

# Learned optimizer: coordinatewise LSTM

Weights for `learned_torch_optim.LearnedOptimizer`, the coordinatewise LSTM optimizer of *Learning to learn
by gradient descent by gradient descent* (Andrychowicz et al., 2016).

```python
from learned_torch_optim import LearnedOptimizer
optimizer = LearnedOptimizer(model.parameters(), weights="{{ weights_ref | default('PATH_OR_REPO', true) }}")
```

{{ recipe | default("", true) }}
"""


def preprocess_log_sign(grad: Tensor, p: float) -> Tensor:
    """Gradient preprocessing of the paper's Appendix A, two features per coordinate.

    ``(log|g| / p, sign(g))`` if ``|g| >= e^-p``, else ``(-1, e^p * g)``.
    """
    magnitude = grad.abs()
    large = magnitude >= math.exp(-p)
    log_part = torch.where(large, torch.log(magnitude.clamp_min(math.exp(-p))) / p, -1.0)
    sign_part = torch.where(large, torch.sign(grad), math.exp(p) * grad)
    return torch.stack((log_part, sign_part), dim=-1)


class CoordinatewiseLSTM(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="learned_torch_optim",
    tags=["learned-optimizer", "optimizer", "l2l"],
    license="mit",
    repo_url="https://github.com/learned-torch-optim/learned_torch_optim",
    paper_url="https://arxiv.org/abs/1606.04474",
    model_card_template=_MODEL_CARD,
):
    """The update rule ``m(g; phi)`` applied to ``n`` coordinates at once.

    Args:
        hidden_size: units per LSTM layer (20 in the paper).
        num_layers: stacked LSTM layers (2 in the paper); 0 gives a linear map of the inputs.
        preprocessing: ``"log_sign"`` (Appendix A) or ``"identity"`` (the raw gradient).
        preprocessing_p: the constant ``p`` of the log/sign preprocessing (10 in the paper).
        output_scale: factor on the read-out (0.1 in the paper).

    Per-coordinate state is one flat vector of :attr:`state_size` floats: for each layer ``l`` the hidden state
    ``h_l`` followed by the cell state ``c_l``.  Every argument is written to ``config.json`` by
    :meth:`save_pretrained`, so saved weights carry their own meaning.
    """

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocessing: str = "log_sign",
        preprocessing_p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be a non-negative integer, got {num_layers!r}")
        if preprocessing not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
        if not preprocessing_p > 0:
            raise ValueError(f"preprocessing_p must be positive, got {preprocessing_p!r}")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.preprocessing = preprocessing
        self.preprocessing_p = float(preprocessing_p)
        self.output_scale = float(output_scale)
        self.num_inputs = 2 if preprocessing == "log_sign" else 1
        self.cells = nn.ModuleList(
            nn.LSTMCell(self.num_inputs if layer == 0 else hidden_size, hidden_size) for layer in range(num_layers)
        )
        self.readout = nn.Linear(hidden_size if num_layers else self.num_inputs, 1)

    @property
    def config(self) -> dict[str, int | float | str]:
        """The constructor's arguments, normalised (what ``config.json`` holds)."""
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocessing": self.preprocessing,
            "preprocessing_p": self.preprocessing_p,
            "output_scale": self.output_scale,
        }

    @property
    def state_size(self) -> int:
        """Floats of state per coordinate: ``num_layers * 2 * hidden_size`` (80 for the paper's network)."""
        return self.num_layers * 2 * self.hidden_size

    def initial_state(
        self, n: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Zero state for ``n`` coordinates, shape ``(n, state_size)``."""
        return torch.zeros(n, self.state_size, device=device, dtype=dtype)

    def features(self, grad: Tensor) -> Tensor:
        """The network's inputs for gradients ``grad`` of shape ``(n,)``: shape ``(n, num_inputs)``."""
        if self.preprocessing == "log_sign":
            return preprocess_log_sign(grad, self.preprocessing_p)
        return grad.unsqueeze(-1)

    def forward(self, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the rule for ``n`` coordinates.

        Args:
            grad: gradients, shape ``(n,)``.
            state: per-coordinate state, shape ``(n, state_size)``.

        Returns:
            ``(update, new_state)``: the additive updates ``u_t``, shape ``(n,)``, and the new state.
        """
        x = self.features(grad)
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = state[:, 2 * layer * self.hidden_size : (2 * layer + 2) * self.hidden_size].chunk(2, dim=1)
            # LSTM cell (Hochreiter & Schmidhuber 1997), gate order i, f, g, o as torch.nn.LSTMCell.
            gates = torch.addmm(cell.bias_ih + cell.bias_hh, x, cell.weight_ih.t())
            gates = torch.addmm(gates, h, cell.weight_hh.t())
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            new_state += [x, c]
        update = self.output_scale * self.readout(x).squeeze(-1)
        if new_state:
            return update, torch.cat(new_state, dim=1)
        return update, state

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, preprocessing={self.preprocessing!r}, "
            f"preprocessing_p={self.preprocessing_p}, output_scale={self.output_scale}"
        )

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        **model_kwargs,
    ) -> CoordinatewiseLSTM:
        """Load ``model.safetensors`` only (never a pickle), strictly: every tensor must match the config."""
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_file

        for download_option in ("proxies", "resume_download"):  # passed by huggingface_hub < 1.0
            model_kwargs.pop(download_option, None)
        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights_file = str(Path(model_id) / "model.safetensors")
        else:
            weights_file = hf_hub_download(
                repo_id=model_id,
                filename="model.safetensors",
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        model.load_state_dict(load_file(weights_file), strict=True)
        return model.eval()
