"""The ingredients of the Neural Art problems (paper section 3.4): a feature network, the content and style images,
and the three terms of ``f(theta) = alpha L_content(c, theta) + beta L_style(s, theta) + gamma L_reg(theta)``.

The paper takes the features of VGG-19, as Gatys et al. (2015) do; VGG cannot be downloaded here, so the features
are those of :class:`ArtFeatureNet`, a small VGG-style network trained as a CIFAR-10 classifier by
``tools/train_art_features.py`` and shipped in ``bundled/art-features`` (config.json, model.safetensors and their
SHA256SUMS).  The style images are scikit-learn's two sample photographs (the ``art`` extra).  The problems built
from these are :class:`learned_torch_optim.meta.tasks.NeuralArtTask`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

ART_FEATURES_DIR = Path(__file__).with_name("bundled") / "art-features"
"""The shipped feature network: ``config.json``, ``model.safetensors`` and ``SHA256SUMS`` listing both."""
TRAIN_FEATURES_COMMAND = "python tools/train_art_features.py --data-dir DIR"
"""The command (from a source checkout, with ``DIR/cifar10-jpeg/cifar10_jpeg.zip``) that writes the shipped network."""
FEATURES_FORMAT = "learned_torch_optim.art_features"
_MAX_CONFIG_BYTES = 64 * 1024
_MAX_WEIGHTS_BYTES = 16 * 1024 * 1024
_MAX_BLOCKS, _MAX_CONVS, _MAX_WIDTH = 6, 4, 512
"""Bounds on a feature network read from files: file sizes, blocks, convolutions per block, channels."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel mean and standard deviation of CIFAR-10's training pixels in [0, 1]: the network's input scaling."""

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
CONTENT_LAYER = "relu3_2"
"""Where the terms look: Gram matrices at the first ReLU of every block (Gatys et al.: conv1_1 ... conv5_1), the
content at the second ReLU of the last block (Gatys et al.: conv4_2, the deepest content layer they show)."""

STYLE_IMAGES = {"china": "china.jpg", "flower": "flower.jpg"}
"""The style images by name: scikit-learn's sample photographs (``sklearn.datasets.load_sample_image``)."""
TRAINING_STYLE, NEW_STYLE = "china", "flower"
"""The style the optimizer is meta-trained on, and the new style it is tested on (paper section 3.4)."""


class ArtFeaturesError(ValueError):
    """A feature network that cannot be found, read or trusted; the message names the file and what to do."""


class ArtFeatureNet(nn.Module):
    """A small VGG-style network, fully convolutional so it takes images of any size: ``blocks`` of 3x3
    convolutions (padding 1) each followed by ReLU, 2x2 average pooling between blocks (Gatys et al. replace VGG's
    max-pooling by average pooling for image synthesis).  The input is an image in [0, 1] pixel units, standardised
    by ``mean`` and ``std`` inside.  Feature ``relu{b}_{i}`` is the ReLU after convolution ``i`` of block ``b``
    (from 1); the convolutions' parameters are ``blocks.{b-1}.{i-1}.weight`` and ``.bias``."""

    def __init__(
        self,
        blocks: Sequence[Sequence[int]] = ((16, 16), (32, 32), (64, 64)),
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.block_widths = [list(block) for block in blocks]
        self.mean_std = [float(value) for value in mean], [float(value) for value in std]
        width, layers = 3, []
        for block in self.block_widths:
            convs = []
            for out in block:
                convs.append(nn.Conv2d(width, out, 3, padding=1))
                width = out
            layers.append(nn.ModuleList(convs))
        self.blocks = nn.ModuleList(layers)
        self.out_channels = width
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, images: Tensor, layers: Sequence[str] = (CONTENT_LAYER,)) -> dict[str, Tensor]:
        """The features ``layers`` of ``images`` (``(N, 3, H, W)``), each ``(N, C, H / 2^(b-1), W / 2^(b-1))``;
        the network runs only as far as the deepest of them."""
        wanted = set(layers)
        unknown = wanted - set(self.layer_names())
        if unknown:
            raise ValueError(f"unknown feature layers {sorted(unknown)}; this network has blocks {self.block_widths}")
        x = (images - self.mean) / self.std
        found: dict[str, Tensor] = {}
        for b, block in enumerate(self.blocks, 1):
            if b > 1:
                x = nn.functional.avg_pool2d(x, 2)
            for i, conv in enumerate(block, 1):
                x = torch.relu(conv(x))
                if f"relu{b}_{i}" in wanted:
                    found[f"relu{b}_{i}"] = x
                    if len(found) == len(wanted):
                        return found
        return found

    def layer_names(self) -> list[str]:
        """The names of the features, ``relu{b}_{i}``, in the order the network computes them."""
        return [f"relu{b}_{i}" for b, block in enumerate(self.block_widths, 1) for i in range(1, len(block) + 1)]

    def config(self) -> dict:
        """What ``config.json`` states to rebuild this network (:func:`load_art_features`)."""
        return {
            "format": FEATURES_FORMAT,
            "version": 1,
            "blocks": self.block_widths,
            "mean": self.mean_std[0],
            "std": self.mean_std[1],
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_listed_sha256(folder: Path, names: Sequence[str]) -> None:
    sums_file = folder / "SHA256SUMS"
    if not sums_file.is_file() or sums_file.stat().st_size > _MAX_CONFIG_BYTES:
        raise ArtFeaturesError(
            f"{sums_file} is missing or too large; {TRAIN_FEATURES_COMMAND} --out {folder} writes it"
        )
    sums = {}
    for line in sums_file.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.strip().partition(" ")
        sums[name.lstrip(" *")] = digest.lower()
    for name in names:
        if name not in sums:
            raise ArtFeaturesError(f"{sums_file} does not list {name}")
        if _sha256(folder / name) != sums[name]:
            raise ArtFeaturesError(
                f"{folder / name} does not match its sha256 in {sums_file}: the file is damaged or another one; "
                f"rebuild the folder with {TRAIN_FEATURES_COMMAND} --out {folder}"
            )


def _blocks_from_config(config: object, label: str) -> list[list[int]]:
    if not isinstance(config, dict) or config.get("format") != FEATURES_FORMAT or config.get("version") != 1:
        raise ArtFeaturesError(f"{label} is not a version-1 {FEATURES_FORMAT} config")
    blocks = config.get("blocks")
    if (
        not isinstance(blocks, list)
        or not 1 <= len(blocks) <= _MAX_BLOCKS
        or not all(isinstance(block, list) and 1 <= len(block) <= _MAX_CONVS for block in blocks)
        or not all(type(width) is int and 1 <= width <= _MAX_WIDTH for block in blocks for width in block)
    ):
        raise ArtFeaturesError(
            f"{label}: blocks {blocks!r} must be 1-{_MAX_BLOCKS} lists of 1-{_MAX_CONVS} widths in 1..{_MAX_WIDTH}"
        )
    for key in ("mean", "std"):
        values = config.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            raise ArtFeaturesError(f"{label}: {key} {values!r} must be three numbers")
    if min(config["std"]) <= 0:
        raise ArtFeaturesError(f"{label}: std {config['std']} must be positive")
    return blocks


def load_art_features(folder: str | os.PathLike | None = None) -> ArtFeatureNet:
    """The feature network in ``folder`` (by default the shipped :data:`ART_FEATURES_DIR`), frozen and in eval mode:
    ``config.json`` and ``model.safetensors``, both checked against the folder's ``SHA256SUMS`` before they are
    read; the config is bounded (blocks, widths) and the tensors must be exactly the ones it describes, finite."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else ART_FEATURES_DIR
    weights_file, config_file = folder / "model.safetensors", folder / "config.json"
    for path in (weights_file, config_file):
        if not path.is_file():
            raise ArtFeaturesError(
                f"the Neural Art feature network is missing: {path} does not exist. Produce it with "
                f"`{TRAIN_FEATURES_COMMAND} --out {folder}` (a CIFAR-10 classifier, docs/meta-training.md), "
                "or pass a folder made by that command"
            )
    for path, bound in ((config_file, _MAX_CONFIG_BYTES), (weights_file, _MAX_WEIGHTS_BYTES)):
        if path.stat().st_size > bound:
            raise ArtFeaturesError(f"{path} is {path.stat().st_size} bytes, over the {bound} allowed")
    _check_listed_sha256(folder, ("config.json", "model.safetensors"))
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtFeaturesError(f"{config_file} is not JSON: {error}") from error
    blocks = _blocks_from_config(config, str(config_file))
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in ArtFeatureNet(blocks).state_dict().items()}
    with safe_open(str(weights_file), framework="pt") as header:
        stored = {name: tuple(header.get_slice(name).get_shape()) for name in header.keys()}
    if stored != expected:
        raise ArtFeaturesError(f"{weights_file} holds tensors {stored}, but {config_file} describes {expected}")
    tensors = load_file(str(weights_file))
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ArtFeaturesError(f"{weights_file}: tensor {name!r} is not floating point and finite")
    network = ArtFeatureNet(blocks, config["mean"], config["std"])
    network.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, strict=True)
    return network.eval().requires_grad_(False)


def gram_matrix(features: Tensor) -> Tensor:
    """``G = F F^T / M`` of features ``(..., C, H, W)``: ``F`` the ``C x M`` matrix of the ``M = H W`` positions
    (Gatys et al., eq. 3, here divided by ``M`` so that it does not grow with the image)."""
    flat = features.flatten(-2)
    return flat @ flat.transpose(-1, -2) / flat.shape[-1]


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """``L_content = ||F - P||^2 / ||P||^2``: the squared error of the features ``F`` of the image to those ``P`` of
    the content image (Gatys et al., eq. 1), relative to ``||P||^2`` so that it is about 1 far from the content."""
    return (features - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def style_loss(grams: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """``L_style = 1/L sum_l ||G_l - A_l||^2 / ||A_l||^2``: the squared error of the Gram matrices ``G_l`` of the
    image to those ``A_l`` of the style image over the ``L`` layers, equally weighted (Gatys et al., eq. 4-5, each
    layer relative to ``||A_l||^2`` instead of their ``1 / (4 N^2 M^2)``)."""
    terms = [(g - a).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12) for g, a in zip(grams, targets, strict=True)]
    return torch.stack(terms).mean()


def total_variation(image: Tensor) -> Tensor:
    """``L_reg``: the mean squared difference of vertically, plus that of horizontally, adjacent pixels of an image
    ``(..., C, H, W)``; 0 for a constant image, 1/3 for uniform white noise in [0, 1]."""
    vertical = (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()
    horizontal = (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean()
    return vertical + horizontal


def square_resize(image: Tensor, size: int) -> Tensor:
    """The central square of an image ``(3, H, W)`` resized to ``(3, size, size)`` (bilinear, antialiased)."""
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[None, :, top : top + side, left : left + side]
    return nn.functional.interpolate(square, size=(size, size), mode="bilinear", antialias=True)[0]


def load_style_image(name: str) -> Tensor:
    """The style image ``name`` (a key of :data:`STYLE_IMAGES`) from scikit-learn's sample images: ``(3, H, W)``
    float32 in [0, 1].  Needs scikit-learn (``pip install learned-torch-optim[art]``)."""
    if name not in STYLE_IMAGES:
        raise ValueError(f"unknown style image {name!r}; known: {', '.join(STYLE_IMAGES)}, or pass an image tensor")
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as error:
        raise ImportError(
            f"the style image {name!r} is scikit-learn's sample image {STYLE_IMAGES[name]}; install scikit-learn: "
            "pip install learned-torch-optim[art]"
        ) from error
    pixels = torch.from_numpy(load_sample_image(STYLE_IMAGES[name]).copy())
    return pixels.permute(2, 0, 1).float() / 255.0


def save_png(image: Tensor, path: str | os.PathLike) -> None:
    """Write an image ``(3, H, W)`` in [0, 1] pixel units as a PNG, clamped to [0, 1] (the problems' parameters
    are unconstrained; this is how they are shown).  Needs matplotlib (``pip install learned-torch-optim[plot]``)."""
    try:
        from matplotlib.image import imsave
    except ImportError as error:
        raise ImportError("saving a PNG needs matplotlib: pip install 'learned-torch-optim[plot]'") from error
    pixels = image.detach().to("cpu", torch.float32).clamp(0, 1).permute(1, 2, 0).contiguous().numpy()
    imsave(os.fspath(path), pixels)
