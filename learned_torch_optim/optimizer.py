"""``LearnedOptimizer``: the coordinatewise LSTM as a drop-in ``torch.optim.Optimizer``.

The class validates arguments, keeps the per-parameter state and groups tensors.  The math of a step for one group of
tensors sharing device and dtype is done by :func:`learned_step` (the reference: a single batched call of the
network) or by :func:`learned_torch_optim.kernels.step_in_blocks` (block by block with bounded memory, with a compiled
kernel or torch operations), as :func:`choose_implementation` decides from ``implementation``.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import Optimizer, ParamsT

from .kernels import implements, step_in_blocks
from .network import CoordinatewiseLSTM, lr_inputs
from .weight_set import WeightSet
from .weights import resolve_weights

__all__ = ["IMPLEMENTATIONS", "LR_RANGE", "LearnedOptimizer", "choose_implementation", "learned_step"]

STATE_KEY = "lstm_state"
OTHER_OPTIMIZERS_OPTIONS = frozenset(
    {"betas", "eps", "amsgrad", "momentum", "dampening", "nesterov", "alpha", "centered", "rho", "lr_decay"}
    | {"initial_accumulator_value", "lambd", "t0", "etas", "step_sizes", "momentum_decay", "decoupled_weight_decay"}
)
"""Hyperparameters of torch.optim's optimizers that a LearnedOptimizer group does not have: a state dict whose groups
carry them (and no ``weights_identity``) is another optimizer's, even with no per-parameter state yet."""
IMPLEMENTATIONS = ("auto", "fused", "blocked", "reference")


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _local(tensor: Tensor) -> Tensor:
    """The shard this process holds of a DTensor (FSDP2), sharing its storage; other tensors as they are."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _zero_state(param: Tensor, state_size: int, dtype: torch.dtype) -> Tensor:
    """Zero LSTM state of shape ``param.shape + (state_size,)``, sharded like ``param`` when it is a DTensor."""
    local_shape = (*_real(_local(param)).shape, state_size)
    local = torch.zeros(local_shape, dtype=dtype, device=param.device)
    if not isinstance(param, DTensor):
        return local
    global_shape = (*_real(param).shape, state_size)
    stride = torch.empty(global_shape, device="meta").stride()
    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=global_shape, stride=stride
    )


def learned_step(
    params: list[Tensor],
    grads: list[Tensor],
    lstm_states: list[Tensor],
    *,
    network: CoordinatewiseLSTM,
    lr: float | Tensor,
    weight_decay: float,
    maximize: bool,
    lr_state: Tensor | None = None,
) -> bool:
    """Apply ``theta <- theta * (1 - lr * weight_decay) + lr * m(g)`` to tensors of one device and dtype.

    The reference implementation: all coordinates of ``params`` go through one call of ``network`` in fp32 (the
    state may be stored in any floating dtype), with ``lr_state`` its lr inputs if it has any.  A coordinate
    whose gradient is NaN or infinite keeps its parameter and state unchanged.  Returns whether every gradient was
    finite.
    """
    real_params = [_real(p) for p in params]
    numels = [p.numel() for p in real_params]
    grad = torch.cat([_real(g).reshape(-1) for g in grads]).float()
    if maximize:
        grad = grad.neg()
    state = torch.cat([s.reshape(n, network.state_size) for s, n in zip(lstm_states, numels)])
    finite = torch.isfinite(grad)
    all_finite = bool(finite.all())
    if not all_finite:
        grad = torch.where(finite, grad, 0.0)

    update, new_state = network(grad, state.float(), lr_state)
    theta = torch.cat([p.reshape(-1) for p in real_params]).float()
    new_theta = theta.mul(1 - lr * weight_decay) if weight_decay else theta.clone()
    new_theta.add_(update * lr)
    if not all_finite:
        new_theta = torch.where(finite, new_theta, theta)
        new_state = torch.where(finite.unsqueeze(1), new_state, state)

    torch._foreach_copy_(real_params, [chunk.view_as(p) for chunk, p in zip(new_theta.split(numels), real_params)])
    torch._foreach_copy_(lstm_states, [chunk.view_as(s) for chunk, s in zip(new_state.split(numels), lstm_states)])
    return all_finite


def _check_group_options(group: Mapping[str, Any], where: str) -> None:
    """Refuse a saved group whose ``lr`` (required), ``weight_decay``, lr history or ``maximize`` this optimizer cannot
    use."""
    if "lr" not in group:
        raise ValueError(f"{where} has no 'lr'; pass a state dict from LearnedOptimizer.state_dict()")
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr = float(lr) if lr.numel() == 1 and not lr.is_complex() else None
    checked = [("lr", lr), ("weight_decay", group.get("weight_decay", 0.0))]
    checked += [(name, group[name]) for name in LR_HISTORY if name in group]
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{where}: {name!r} must be a finite non-negative number, got {group[name]!r}")
    if not isinstance(group.get("maximize", False), bool):
        raise ValueError(f"{where}: 'maximize' must be True or False, got {group['maximize']!r}")


def choose_implementation(implementation: str, device: torch.device, network: CoordinatewiseLSTM) -> str:
    """How a step of ``implementation`` runs on ``device`` for ``network`` (the one place that decides):
    ``"reference"`` (:func:`learned_step`), ``"compiled"`` (blocks with the compiled kernel: C++ on the CPU, Triton
    on CUDA; torch operations where none loads) or ``"blocked"`` (blocks with torch operations).

    ``"auto"`` is the reference when traced by ``torch.compile`` (inductor fuses that formulation itself) or when the
    network uses an option the blocked step does not compute (:func:`kernels.implements`; the constructor refuses
    ``"fused"`` and ``"blocked"`` then), compiled on the CPU and blocked on CUDA (where the Triton kernel measured
    slower, ``docs/performance.md``).
    """
    if implementation == "reference" or (
        implementation == "auto" and (torch.compiler.is_compiling() or not implements(network))
    ):
        return "reference"
    if implementation == "fused" or (implementation == "auto" and device.type != "cuda"):
        return "compiled"
    return "blocked"


def _lr_state(group: dict[str, Any]) -> Tensor:
    """:func:`~.network.lr_inputs` ``(delta_t, rho_t)`` of ``group`` at its lr now, from the lr of its first step and
    the largest it has had, which the group keeps as ``"first_lr"`` and ``"peak_lr"`` (so a checkpoint resumes
    them)."""
    lr = float(group["lr"])
    group.setdefault("first_lr", group.get("peak_lr", lr))  # a checkpoint from before first_lr: no warm-up seen
    group["peak_lr"] = peak = max(float(group.get("peak_lr", lr)), lr)
    return lr_inputs(lr, group["first_lr"], peak)


LR_HISTORY = ("first_lr", "peak_lr")
"""The keys of a param group that hold the lrs it has had (:func:`_lr_state`)."""


LR_RANGE = 30.0
"""How far (as a factor either way) a constructor's ``lr`` may be from the weights' ``nominal_lr``."""


def _check_lr_unit(lr: float | Tensor, network: CoordinatewiseLSTM, group_index: int) -> None:
    """Refuse an ``lr`` that is not 0 and more than :data:`LR_RANGE` times away from ``network.nominal_lr``."""
    value, nominal = float(lr), network.nominal_lr
    if value == 0.0 or nominal / LR_RANGE <= value <= nominal * LR_RANGE:
        return
    unit = (
        "multiplies the step the weights were meta-trained to make (1.0: as trained)"
        if nominal == 1.0
        else f"is in Adam's units: {nominal:g} gives the step the weights were meta-trained to make"
    )
    raise ValueError(
        f"lr={value:g} (parameter group {group_index}) is {value / nominal:.3g} times the lr these weights were "
        f"meta-trained at (nominal_lr={nominal:g} in their config): for them lr {unit}. Leave lr out to use "
        f"{nominal:g}, or pass a value in [{nominal / LR_RANGE:.3g}, {nominal * LR_RANGE:.3g}]; an LR scheduler may "
        "take it anywhere afterwards"
    )


class LearnedOptimizer(Optimizer):
    r"""Optimizer driven by a meta-trained coordinatewise LSTM (Andrychowicz et al., 2016).

    Replaces ``torch.optim.Adam(model.parameters())`` with ``LearnedOptimizer(model.parameters())``.  Each step
    computes, per coordinate, ``theta <- theta * (1 - lr * weight_decay) + lr * m(grad; phi)`` where ``m`` is the
    network of :class:`CoordinatewiseLSTM` (paper eq. 1; the decoupled weight decay is as in AdamW).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        weights: a packaged name (see :func:`list_pretrained`), a local ``save_pretrained`` directory, a hub repo
            id ``org/name``, or a :class:`CoordinatewiseLSTM` instance: the network of every parameter group that
            does not name its own.  A group may: ``{"params": ..., "weights": ..., "revision": ...}`` (e.g. one
            network for convolutional weights and one for the rest, as the paper's CIFAR-10 experiment, section
            3.3).  Weights may also be a *weight set* (:class:`~learned_torch_optim.weight_set.WeightSet`: several
            networks and a rule that picks one by the parameter's name): then pass ``model.named_parameters()``;
            each group is split into one group per network, in the set's order (``self.weight_set``).
            ``self.group_networks`` lists each group's network, ``self.network`` is the constructor's (a set's
            fallback network).
        revision: branch, tag or commit when ``weights`` is a hub repo id.
        lr: the learning rate; the step is the network's update times ``lr / nominal_lr``, where ``nominal_lr``
            (in the weights' config) is the lr they were meta-trained at.  ``None`` (default) takes each group's
            ``nominal_lr``: the update as trained.  Weights with ``nominal_lr = 1e-3`` (the default) take ``lr`` in
            Adam's units (the ``lr`` given to Adam works as it is); for those with ``nominal_lr = 1``
            (``l2l-general``, the paper's) ``lr`` is a factor on the trained step.  An ``lr`` more than
            :data:`LR_RANGE` times away from ``nominal_lr`` (other than 0) is refused at construction: it is meant
            in the other unit.  0.0 is an exact no-op; LR schedulers act through ``group["lr"]``.
        weight_decay: decoupled weight decay, ``theta *= 1 - lr * weight_decay`` every step.
        maximize: maximize the objective instead of minimizing it.
        implementation: how a step is computed; every choice computes the same function (to fp32 rounding).
            ``"fused"``: block by block with temporaries bounded by a fixed budget whatever the model's size, the
            math of a block done by a compiled kernel: C++ built at first use on the CPU, Triton on CUDA devices
            (without a C++ compiler or Triton, by in-place torch operations, silently).  ``"blocked"``: the same
            with torch operations only.  ``"reference"``: all coordinates through one call of the network
            (``CoordinatewiseLSTM.forward``), with temporaries of some 200 to 400 floats per coordinate.  ``"auto"``
            (default): ``"fused"`` on the CPU and ``"blocked"`` on CUDA (where the Triton kernel measured slower,
            see ``docs/performance.md``), and ``"reference"`` when traced by ``torch.compile`` (which fuses that
            formulation itself).  Every network form runs on every implementation; the Triton kernel covers the
            paper's form only (``network.is_paper_rule``), other forms run the blocked torch operations on CUDA.
        state_dtype: the dtype the LSTM state is stored in; ``torch.bfloat16`` halves its memory (the math stays
            fp32, the state is rounded when stored).

    State per parameter: ``step`` and ``lstm_state``, the hidden and cell state of every LSTM layer for every
    coordinate (``state_size`` floats of ``state_dtype`` per coordinate of its group's network, 80 for the paper's
    network), followed by the network's gradient accumulators when it has extra inputs.  ``state_dict()`` records
    which weights each group's state belongs to (``group_weights_identities``); loading it into an optimizer whose
    group runs other weights warns.
    """

    def __init__(
        self,
        params: ParamsT,
        weights: str | os.PathLike | CoordinatewiseLSTM = "default",
        *,
        revision: str | None = None,
        lr: float | Tensor | None = None,
        weight_decay: float = 0.0,
        maximize: bool = False,
        implementation: str = "auto",
        state_dtype: torch.dtype = torch.float32,
    ) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if not isinstance(state_dtype, torch.dtype) or not state_dtype.is_floating_point:
            raise ValueError(f"state_dtype must be a floating torch.dtype, got {state_dtype!r}")
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr is not None and not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self.implementation = implementation
        self.state_dtype = state_dtype
        self._warned_non_finite = False
        self.weights = self._checked_weights(weights, revision)
        self.weight_set = self.weights if isinstance(self.weights, WeightSet) else None
        self.network = self.weight_set.networks[self.weight_set.rule.fallback] if self.weight_set else self.weights
        self.group_networks: list[CoordinatewiseLSTM] = []
        self._lr_from_weights = lr is None
        defaults = dict(lr=self.network.nominal_lr if lr is None else lr, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _checked_weights(
        self, weights: str | os.PathLike | CoordinatewiseLSTM | WeightSet, revision: str | None
    ) -> CoordinatewiseLSTM | WeightSet:
        resolved = resolve_weights(weights, revision=revision)
        networks = resolved.networks.values() if isinstance(resolved, WeightSet) else [resolved]
        for network in networks:
            if self.implementation in ("fused", "blocked") and not implements(network):
                raise ValueError(
                    f"implementation={self.implementation!r} does not compute every option of weights {weights!r} "
                    f"(config {network.config}); use 'auto' or 'reference'"
                )
            if self.state_dtype != torch.float32 and network.accumulator_size:
                raise ValueError(
                    f"state_dtype={self.state_dtype} would round the gradient accumulators (momenta, second moment, "
                    f"step count) of weights {weights!r} (config {network.config}); they need torch.float32"
                )
        return resolved

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as ``torch.optim.Optimizer.add_param_group`` does.  A group may name its own weights with
        ``"weights"`` (and ``"revision"``), as the constructor's arguments: it then runs that network, with state of
        that network's size; other groups run the constructor's weights.  A group whose weights are a weight set is
        added as one group per network of the set that its rule gives parameters to (named parameters only)."""
        if "revision" in param_group and "weights" not in param_group:
            raise ValueError("a parameter group gives 'revision' without 'weights'; give both or neither")
        param_group = dict(param_group)  # the caller's dict keeps its "weights" (it may build another optimizer)
        weights = param_group.pop("weights", None)
        revision = param_group.pop("revision", None)
        resolved = self.weights if weights is None else self._checked_weights(weights, revision)
        if isinstance(resolved, WeightSet):
            self._add_split(param_group, resolved)
            return
        network = resolved
        if "lr" not in param_group and self._lr_from_weights:
            param_group["lr"] = network.nominal_lr
        _check_lr_unit(param_group.get("lr", self.defaults["lr"]), network, len(self.param_groups))
        super().add_param_group(param_group)
        self.group_networks.append(network)

    def _add_split(self, param_group: dict[str, Any], weight_set: WeightSet) -> None:
        """Add ``param_group`` as one group per network of ``weight_set``, each with the parameters its rule gives
        that network (paper section 3.3: one LSTM per kind of parameter)."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if not all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in params):
            raise TypeError(
                f"weights {weight_set.weights_identity.source!r} are a weight set of networks "
                f"{', '.join(weight_set.networks)}, chosen for each parameter by its name: pass "
                "model.named_parameters() (not model.parameters()), or (name, parameter) pairs in a group's 'params'"
            )
        parts = weight_set.split(params)
        if params and list(parts) == [weight_set.rule.fallback] and weight_set.rule.patterns:
            rules = ", ".join(f"{pattern!r} -> {network}" for pattern, network in weight_set.rule.patterns)
            warnings.warn(
                f"weight set {weight_set.weights_identity.source!r}: no parameter name matches its rules ({rules}), "
                f"so every parameter runs its fallback network {weight_set.rule.fallback!r}; name the parameters as "
                "the rules expect, or give each group its network ('SET/NETWORK' for a packaged set)",
                stacklevel=3,
            )
        for name, part in parts.items():
            self.add_param_group({**param_group, "params": part, "weights": weight_set.networks[name]})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("weight_decay", 0.0)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("state_dtype", torch.float32)
        self.__dict__.setdefault("_warned_non_finite", False)
        self.__dict__.setdefault("group_networks", [self.network] * len(self.param_groups))
        self.__dict__.setdefault("_lr_from_weights", False)
        self.__dict__.setdefault("weights", self.network)
        self.__dict__.setdefault("weight_set", None)

    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "network": self.network,
            "weights": self.weights,
            "weight_set": self.weight_set,
            "group_networks": self.group_networks,
            "implementation": self.implementation,
            "state_dtype": self.state_dtype,
            "_lr_from_weights": self._lr_from_weights,
        }

    @staticmethod
    def _network_on(network: CoordinatewiseLSTM, device: torch.device) -> CoordinatewiseLSTM:
        """``network`` on ``device``: itself where it lives, else a copy made now (so that changes made to the
        network in place are always seen)."""
        home = next(network.parameters()).device
        return network if home == device else copy.deepcopy(network).to(device)

    def _init_group(
        self,
        group: dict[str, Any],
        network: CoordinatewiseLSTM,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor],
        steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if not (p.is_floating_point() or p.is_complex()):
                label = next(label for q, label in self._param_labels() if q is p)
                raise TypeError(
                    f"LearnedOptimizer: {label} has dtype {p.dtype}; only floating-point and complex parameters can "
                    "be optimized (convert it, e.g. with .float(), or leave it out of the optimizer)"
                )
            if p.grad.is_sparse:
                raise RuntimeError("LearnedOptimizer does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state[STATE_KEY] = _zero_state(p, network.state_size, self.state_dtype)
            params.append(_local(p))
            grads.append(_local(p.grad))
            states.append(_local(state[STATE_KEY]))
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = []  # every group first, so that a parameter refused in any group leaves all unchanged
        for group, network in zip(self.param_groups, self.group_networks):
            params: list[Tensor] = []
            grads: list[Tensor] = []
            states: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, network, params, grads, states, steps)
            gathered.append((group, network, [params, grads, states, steps]))
        all_finite = True
        for group, network, tensors in gathered:
            if not tensors[0]:
                continue
            options = dict(
                lr=group["lr"] / network.nominal_lr,
                weight_decay=group["weight_decay"] * network.nominal_lr,
                maximize=group["maximize"],
                lr_state=_lr_state(group) if network.lr_input_columns else None,
            )
            buckets = Optimizer._group_tensors_by_device_and_dtype(tensors)
            for (device, _), ((b_params, b_grads, b_states, b_steps), _) in buckets.items():
                chosen = choose_implementation(self.implementation, device, network)
                if chosen == "reference":
                    on_device = self._network_on(network, device)
                    all_finite &= learned_step(b_params, b_grads, b_states, network=on_device, **options)
                else:
                    real_params, real_grads = [_real(p) for p in b_params], [_real(g) for g in b_grads]
                    all_finite &= step_in_blocks(
                        real_params, real_grads, b_states, network, compiled=chosen == "compiled", **options
                    )
                torch._foreach_add_(b_steps, 1)
        if not all_finite and not self._warned_non_finite:
            self._warned_non_finite = True
            warnings.warn(
                "LearnedOptimizer: some gradient coordinates were NaN or infinite; those coordinates were left "
                "unchanged (parameters and LSTM state). This warning is shown once.",
                RuntimeWarning,
                stacklevel=2,
            )
        return loss

    def reset_state(self) -> None:
        """Forget all per-parameter state and each group's lr history (``first_lr``, ``peak_lr``), so the next step
        starts a new optimisation."""
        self.state.clear()
        for group in self.param_groups:
            for key in LR_HISTORY:
                group.pop(key, None)

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        state_dict["weights_identity"] = self.weights.weights_identity.as_dict()
        state_dict["group_weights_identities"] = [network.weights_identity.as_dict() for network in self.group_networks]
        return state_dict

    def _param_labels(self) -> list[tuple[Tensor, str]]:
        """Each parameter with its label: ``parameter i`` (its index across all groups, as in a state dict), and
        its name where the group has ``param_names``."""
        labels = []
        for group in self.param_groups:
            names = group.get("param_names")
            for position, param in enumerate(group["params"]):
                name = f" ({names[position]!r})" if names else ""
                labels.append((param, f"parameter {len(labels)}{name}"))
        return labels

    def _check_state_dict(self, state_dict: Any) -> list[Any]:
        """Refuse a state dict this optimizer cannot resume from, with the reason, before anything is changed:
        its layout, the groups (count, sizes, ``lr``, ``weight_decay``, ``maximize``) and every parameter's
        ``step`` and ``lstm_state`` (type, dtype, shape, finite values).  Warns when it was saved with other weights.
        Returns the saved parameter ids in the order of this optimizer's parameters."""
        where = "LearnedOptimizer.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where}: expected a dict from LearnedOptimizer.state_dict(), got {type(state_dict)}")
        missing = [key for key in ("state", "param_groups") if key not in state_dict]
        if missing:
            raise ValueError(
                f"{where}: the state dict has no {' or '.join(map(repr, missing))} (keys: {sorted(state_dict)}); "
                "pass a dict from LearnedOptimizer.state_dict()"
            )
        saved_state, saved_groups = state_dict["state"], state_dict["param_groups"]
        if not isinstance(saved_state, Mapping) or not all(isinstance(v, Mapping) for v in saved_state.values()):
            raise ValueError(f"{where}: state_dict['state'] must map parameter ids to dicts of state")
        if not isinstance(saved_groups, (list, tuple)) or not all(
            isinstance(g, Mapping) and isinstance(g.get("params"), (list, tuple)) for g in saved_groups
        ):
            raise ValueError(f"{where}: state_dict['param_groups'] must be a list of dicts, each with a 'params' list")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{where}: the state dict has {len(saved_groups)} parameter groups, this optimizer "
                f"{len(self.param_groups)}; create the optimizer with the same groups it was saved with"
            )
        saved_identities = self._saved_identities(state_dict, where)
        for index, (saved_identity, network) in enumerate(zip(saved_identities, self.group_networks)):
            if saved_identity is not None and saved_identity.get("sha256") != network.weights_identity.sha256:
                group = f" of parameter group {index}" if len(self.param_groups) > 1 else ""
                warnings.warn(
                    f"{where}: the saved LSTM state{group} belongs to weights {dict(saved_identity)}, but this "
                    f"optimizer runs {network.weights_identity.as_dict()} there; that state means nothing to another "
                    "network (call reset_state() to start afresh)",
                    UserWarning,
                    stacklevel=3,
                )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{where}: parameter group {index} has {len(saved['params'])} parameters in the state dict, "
                    f"{len(group['params'])} in this optimizer; create the optimizer with the same parameters"
                )
            _check_group_options(saved, f"{where}: parameter group {index}")
        saved_ids = [i for group in saved_groups for i in group["params"]]
        unknown = set(saved_state).difference(saved_ids)
        if unknown:
            raise ValueError(f"{where}: state_dict['state'] has entries {sorted(unknown, key=str)} for no parameter")
        networks = [network for group, network in zip(self.param_groups, self.group_networks) for _ in group["params"]]
        identities = [identity for group, identity in zip(saved_groups, saved_identities) for _ in group["params"]]
        for param_id, (param, label), network, identity in zip(saved_ids, self._param_labels(), networks, identities):
            if param_id in saved_state:
                self._check_param_state(saved_state[param_id], param, f"{param_id!r}", label, network, identity)
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            foreign = sorted(OTHER_OPTIMIZERS_OPTIONS.intersection(saved).difference(group))
            if foreign and "weights_identity" not in state_dict:
                raise ValueError(
                    f"{where}: parameter group {index} has options {foreign} of another torch.optim optimizer and "
                    "the state dict names no weights: it was not saved by a LearnedOptimizer (load none to start "
                    "afresh)"
                )
        return saved_ids

    def _saved_identities(self, state_dict: Mapping[str, Any], where: str) -> list[Mapping[str, Any] | None]:
        """The weights each saved group's state belongs to: ``group_weights_identities``, else (state dicts from
        before per-group weights) ``weights_identity`` for every group; ``None`` where not recorded."""
        overall = state_dict.get("weights_identity")
        if overall is not None and not isinstance(overall, Mapping):
            raise ValueError(f"{where}: state_dict['weights_identity'] must be a dict, got {overall!r}")
        per_group = state_dict.get("group_weights_identities")
        if per_group is None:
            return [overall] * len(self.param_groups)
        if (
            not isinstance(per_group, (list, tuple))
            or len(per_group) != len(self.param_groups)
            or not all(isinstance(identity, Mapping) for identity in per_group)
        ):
            raise ValueError(
                f"{where}: state_dict['group_weights_identities'] must be a list of {len(self.param_groups)} dicts, "
                f"one per parameter group, got {per_group!r}"
            )
        return list(per_group)

    def _check_param_state(
        self,
        saved: Mapping[str, Any],
        param: Tensor,
        key: str,
        label: str,
        network: CoordinatewiseLSTM,
        saved_identity: Mapping[str, Any] | None,
    ) -> None:
        """Refuse the saved state ``state_dict['state'][key]`` of the parameter ``label`` unless it is ``step`` and
        ``lstm_state`` as this optimizer keeps them, finite."""
        where = f"LearnedOptimizer.load_state_dict: the saved state of {label}"
        if set(saved) != {"step", STATE_KEY}:
            raise ValueError(
                f"{where} has keys {sorted(saved)}, not 'step' and {STATE_KEY!r}: it was not saved by a "
                "LearnedOptimizer (another optimizer's state cannot be resumed; load none to start afresh)"
            )
        step, lstm_state = saved["step"], saved[STATE_KEY]
        if not isinstance(step, Tensor) or step.dim() != 0 or not step.is_floating_point():
            raise ValueError(f"{where}: 'step' must be a 0-dimensional floating-point tensor, got {step!r}")
        if not isinstance(lstm_state, Tensor) or not lstm_state.is_floating_point():
            kind = lstm_state.dtype if isinstance(lstm_state, Tensor) else type(lstm_state)
            raise ValueError(f"{where}: {STATE_KEY!r} must be a floating-point tensor, got {kind}")
        expected = (*_real(param).shape, network.state_size)
        if tuple(lstm_state.shape) != expected:
            raise ValueError(
                f"LearnedOptimizer.load_state_dict: the saved LSTM state of {label} has shape "
                f"{tuple(lstm_state.shape)}, but this parameter and network need {expected} (saved for weights "
                f"{saved_identity}, this optimizer runs {network.weights_identity.as_dict()})"
            )
        if not 0 <= float(step) < math.inf or not torch.isfinite(_local(lstm_state)).all():
            raise ValueError(
                f"{where} holds NaN, infinite or negative values ('step' {float(step)}); resuming from it would turn "
                "the parameter NaN. The checkpoint is corrupt or its run had diverged: load an earlier one, or delete "
                f"state_dict['state'][{key}] to restart this parameter's state from zero"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`, after checking all of it (see ``_check_state_dict``)."""
        saved_ids = self._check_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        super().load_state_dict(state_dict)
        # The base class casts floating state to each parameter's dtype; the LSTM state is kept in state_dtype.
        for param_id, param in zip(saved_ids, params):
            saved = state_dict["state"].get(param_id)
            if saved is not None:
                self.state[param][STATE_KEY] = saved[STATE_KEY].to(
                    device=param.device, dtype=self.state_dtype, copy=True, memory_format=torch.contiguous_format
                )
