"""Split a model into a frozen trunk and a trainable head, so the trunk runs once per image.

With ``--train projection`` or ``--train last-blocks N`` most of the network is frozen: its output
for an image never changes during training. :func:`split_model` returns ``(trunk, head)`` with
``head(trunk(pixels)) == enc.features(pixels)``; the loop caches ``trunk(pixels)`` for every image
(and its mirror image when flips are on) once, then trains and validates on the head alone — on a
CPU this turns hours into minutes.

Supported: ``transformers`` CLIP (trunk = embeddings + first ``L−N`` vision layers, or the whole
pooled vision tower for ``projection``) and the EfficientNet-Lite0 encoder (trunk = stem + first
``16−N`` blocks, or all blocks for ``projection``). Cached trunk outputs per image: CLIP
projection ``hidden`` floats; CLIP last-blocks ``tokens × hidden`` (ViT-L/14-336: 577 × 1024, 2.4 MB
in float32); EfficientNet 320 × 7 × 7 (63 kB) or the block's output map.
"""

from __future__ import annotations

from typing import Callable

import torch

from geosolver.errors import TrainSetupError
from geosolver.train.params import is_clip


class _ClipProjectionHead(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.proj = model.visual_projection

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class _ClipBlocksHead(torch.nn.Module):
    def __init__(self, model, n: int):
        super().__init__()
        layers = model.vision_model.encoder.layers
        self.layers = torch.nn.ModuleList(list(layers)[len(layers) - n :])
        self.post_layernorm = model.vision_model.post_layernorm
        self.proj = model.visual_projection

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.proj(self.post_layernorm(hidden[:, 0, :]))


class _EffnetHead(torch.nn.Module):
    def __init__(self, net, n: int):
        super().__init__()
        self.net_ref = [net]  # not registered: only the modules below are the head
        self.blocks = torch.nn.ModuleList(list(net._blocks)[len(net._blocks) - n :] if n else [])
        self.conv_head, self.bn1 = net._conv_head, net._bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net_ref[0]
        for b in self.blocks:
            x = b(x)
        x = net._swish(self.bn1(self.conv_head(x)))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)


def split_model(model: torch.nn.Module, mode: str, blocks: int = 2) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.nn.Module]:
    """``(trunk, head)`` for ``mode`` in ``projection`` / ``last-blocks``.

    Args:
        model: the encoder's module (a ``CLIPModel`` or the EfficientNet-Lite0 feature module).
        mode: ``projection`` or ``last-blocks``.
        blocks: N for ``last-blocks``.

    Returns:
        ``trunk``: pixels ``(n, 3, S, S)`` → cached features (call under ``torch.no_grad``);
        ``head``: a module sharing the model's trainable parameters, features → ``(n, dim)``.

    Raises:
        TrainSetupError: unsupported model or mode.
    """
    if mode not in ("projection", "last-blocks"):
        raise TrainSetupError(f"--cache-trunk works with --train projection or last-blocks, not {mode!r}")
    if is_clip(model):
        vm = model.vision_model
        n_layers = len(vm.encoder.layers)
        if mode == "projection":
            return (lambda px: vm(pixel_values=px).pooler_output), _ClipProjectionHead(model)
        if not 1 <= blocks <= n_layers:
            raise TrainSetupError(f"--blocks must be between 1 and {n_layers}, got {blocks}")

        def clip_trunk(px: torch.Tensor) -> torch.Tensor:
            h = vm.pre_layrnorm(vm.embeddings(px))
            for layer in list(vm.encoder.layers)[: n_layers - blocks]:
                out = layer(h, None)
                h = out[0] if isinstance(out, tuple) else out
            return h

        return clip_trunk, _ClipBlocksHead(model, blocks)
    net = getattr(model, "net", None)
    if net is not None and hasattr(net, "_blocks") and hasattr(net, "_conv_head"):
        n_blocks = len(net._blocks)
        n = 0 if mode == "projection" else blocks
        if not 0 <= n <= n_blocks:
            raise TrainSetupError(f"--blocks must be between 1 and {n_blocks}, got {blocks}")

        def effnet_trunk(px: torch.Tensor) -> torch.Tensor:
            x = net._swish(net._bn0(net._conv_stem(px)))
            for b in list(net._blocks)[: n_blocks - n]:
                x = b(x)
            return x

        return effnet_trunk, _EffnetHead(net, n)
    raise TrainSetupError(f"--cache-trunk does not know how to split {type(model).__name__}; train without it")
