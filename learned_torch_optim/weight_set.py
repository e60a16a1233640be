"""Weight sets: several networks under one name, each the update rule of the parameters a rule gives it.

The paper's CIFAR-10 experiment (Andrychowicz et al. 2016, section 3.3) found one coordinatewise LSTM for every
parameter not enough, and meta-trained two: one for the convolutional layers, one for the fully-connected ones.  A
:class:`WeightSet` holds such networks by name with a :class:`NetworkRule` that maps parameter names to network names.
On disk it is a folder::

    weight_set.json        {"format": "learned_torch_optim.weight_set", "version": 1,
                            "rules": [["conv.*.weight", "conv"]], "fallback": "fc"}
    conv/                  config.json, model.safetensors (CoordinatewiseLSTM.save_pretrained)
    fc/                    config.json, model.safetensors
    README.md              the set's model card

``rules`` are tried in order: a parameter runs the network of the first pattern that matches its whole name, else
the ``fallback`` network.  A pattern is a shell-style glob (:func:`fnmatch.fnmatchcase`: case-sensitive, ``*`` any
characters, dots included, ``?`` one, ``[seq]`` / ``[!seq]`` one in / not in ``seq``; a ``[`` without its ``]`` is a
literal ``[``), not a regular expression: a regex from a downloaded set could hang the reader by catastrophic
backtracking, a glob matches in time about linear in the name.  Reading a set is
:func:`learned_torch_optim.weights.resolve_weights`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .files import atomic_write_text
from .network import CoordinatewiseLSTM

SET_FILE = "weight_set.json"
SET_FORMAT = "learned_torch_optim.weight_set"
SET_VERSION = 1
MAX_NETWORKS = 16
"""Bounds on a loaded ``weight_set.json``: networks in a set, patterns in its rule, characters in a pattern, bytes
in the file.  Far beyond any set we know of (the paper's has two networks and one pattern); above them a file is
refused before anything is built from it."""
MAX_PATTERNS = 256
MAX_PATTERN_LENGTH = 1000
MAX_SET_FILE_BYTES = 1 << 20
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A network's name: also its sub-folder's name, so no dots, slashes or leading dashes."""
_SET_KEYS = frozenset({"format", "version", "rules", "fallback"})

_SET_CARD = """---
library_name: learned_torch_optim
tags:
- learned-optimizer
- optimizer
- l2l
license: mit
---

# Learned optimizer: a set of coordinatewise LSTMs

Weights for `learned_torch_optim.LearnedOptimizer`: {count} coordinatewise LSTMs, each the update rule of the
parameters the rule below gives it, as in the CIFAR-10 experiment of *Learning to learn by gradient descent by
gradient descent* (Andrychowicz et al., 2016, section 3.3).

```python
from learned_torch_optim import LearnedOptimizer

optimizer = LearnedOptimizer(model.named_parameters(), weights="PATH_OR_REPO")  # names choose the networks
```

| parameter name (glob, whole name) | network |
| --- | --- |
{rows}

{recipe}
"""


class WeightSetError(ValueError):
    """A rule or weight set that is malformed; the message names it."""


@dataclass(frozen=True)
class NetworkRule:
    """Which network runs each parameter: the first of ``patterns`` (``(glob, network)`` pairs) whose glob
    matches the parameter's whole name (:func:`fnmatch.fnmatchcase`), else ``fallback``."""

    patterns: tuple[tuple[str, str], ...]
    fallback: str

    def __post_init__(self) -> None:
        if len(self.patterns) > MAX_PATTERNS:
            raise WeightSetError(f"a rule has {len(self.patterns)} patterns, more than the bound of {MAX_PATTERNS}")
        for name in [network for _, network in self.patterns] + [self.fallback]:
            if not isinstance(name, str) or not NETWORK_NAME.fullmatch(name):
                raise WeightSetError(
                    f"network name {name!r}: a name is 1 to 64 letters, digits, '_' or '-' (not starting with '_' "
                    "or '-'), as it is also the network's folder"
                )
        for pattern, _ in self.patterns:
            if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
                raise WeightSetError(f"pattern {pattern!r} is not a glob of at most {MAX_PATTERN_LENGTH} characters")
        if len(self.networks) > MAX_NETWORKS:
            raise WeightSetError(f"a rule names {len(self.networks)} networks, more than the bound of {MAX_NETWORKS}")

    @property
    def networks(self) -> tuple[str, ...]:
        """The network names, in the order they first appear (the fallback last unless a pattern named it)."""
        return tuple(dict.fromkeys([network for _, network in self.patterns] + [self.fallback]))

    def network_for(self, parameter_name: str) -> str:
        """The network that runs the parameter called ``parameter_name``."""
        for pattern, network in self.patterns:
            if fnmatch.fnmatchcase(parameter_name, pattern):
                return network
        return self.fallback

    def as_json(self) -> dict[str, Any]:
        """The contents of ``weight_set.json``."""
        return {
            "format": SET_FORMAT,
            "version": SET_VERSION,
            "rules": [list(pair) for pair in self.patterns],
            "fallback": self.fallback,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> NetworkRule:
        """The rule of a ``weight_set.json``'s parsed contents, checked strictly; errors name ``where``."""
        if not isinstance(data, dict):
            raise WeightSetError(f"{where} holds a JSON {type(data).__name__}, not an object")
        unknown, missing = set(data) - _SET_KEYS, _SET_KEYS - set(data)
        if unknown:
            raise WeightSetError(
                f"{where} has unknown key(s) {sorted(unknown)}: written by a newer learned-torch-optim? upgrade it"
            )
        if missing:
            raise WeightSetError(f"{where} lacks {sorted(missing)}; it needs {sorted(_SET_KEYS)}")
        if data["format"] != SET_FORMAT or data["version"] != SET_VERSION:
            raise WeightSetError(
                f"{where}: format {data['format']!r} version {data['version']!r} is not {SET_FORMAT!r} version "
                f"{SET_VERSION} (a newer learned-torch-optim may read it)"
            )
        rules = data["rules"]
        if not isinstance(rules, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair) for pair in rules
        ):
            raise WeightSetError(f"{where}: 'rules' must be a list of [glob, network] pairs of strings")
        try:
            return cls(tuple((pattern, network) for pattern, network in rules), data["fallback"])
        except WeightSetError as error:
            raise WeightSetError(f"{where}: {error}") from error

    @classmethod
    def parse(cls, values: Sequence[str]) -> NetworkRule:
        """The rule of ``GLOB=NETWORK ... FALLBACK`` (the ``--network-rule`` syntax): pairs split at their last
        ``=``, then one bare network name, the fallback."""
        *pairs, fallback = values or [""]
        if not pairs or "=" in fallback:
            raise WeightSetError(
                f"network rule {list(values)!r}: give GLOB=NETWORK pairs, then the fallback network's name, e.g. "
                "'conv.*.weight=conv' fc"
            )
        parsed = []
        for pair in pairs:
            pattern, separator, network = pair.rpartition("=")
            if not separator:
                raise WeightSetError(f"network rule: {pair!r} is not GLOB=NETWORK (only the last value is bare)")
            parsed.append((pattern, network))
        return cls(tuple(parsed), fallback)


class WeightSet(nn.Module):
    """Networks by name (``networks``, an ``nn.ModuleDict`` in the order of ``rule.networks``) and the rule that
    gives each parameter its network.  ``state_dict()`` holds every network's tensors, so a meta-trainer trains and
    checkpoints a set as one module."""

    def __init__(self, networks: Mapping[str, CoordinatewiseLSTM], rule: NetworkRule) -> None:
        super().__init__()
        if set(networks) != set(rule.networks):
            raise WeightSetError(
                f"a weight set's networks {sorted(networks)} are not the networks its rule names {list(rule.networks)}"
            )
        self.networks = nn.ModuleDict({name: networks[name] for name in rule.networks})
        self.rule = rule

    def split(self, named_params: Iterable[tuple[str, Tensor]]) -> dict[str, list[tuple[str, Tensor]]]:
        """The named parameters each network runs (networks given none are left out), in the order given."""
        parts: dict[str, list[tuple[str, Tensor]]] = {}
        for name, param in named_params:
            parts.setdefault(self.rule.network_for(name), []).append((name, param))
        return {network: parts[network] for network in self.rule.networks if network in parts}

    def save_pretrained(self, folder: str | os.PathLike, *, model_card_kwargs: dict[str, Any] | None = None) -> None:
        """Write the set into ``folder``: each network with its ``save_pretrained`` into the sub-folder of its name,
        a model card ``README.md``, then ``weight_set.json``, each file written whole before it replaces another
        (a reader finds the set complete, or its ``weight_set.json`` not yet there)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SET_FILE).unlink(missing_ok=True)  # the set is not loadable while its parts are replaced
        for name, network in self.networks.items():
            network.save_pretrained(folder / name, model_card_kwargs=model_card_kwargs)
        rows = "\n".join(f"| `{pattern}` | `{network}` |" for pattern, network in self.rule.patterns)
        rows += f"\n| (any other) | `{self.rule.fallback}` |"
        recipe = (model_card_kwargs or {}).get("recipe", "")
        atomic_write_text(folder / "README.md", _SET_CARD.format(count=len(self.networks), rows=rows, recipe=recipe))
        atomic_write_text(folder / SET_FILE, json.dumps(self.rule.as_json(), indent=2) + "\n")

    def extra_repr(self) -> str:
        return f"rule={self.rule}"
