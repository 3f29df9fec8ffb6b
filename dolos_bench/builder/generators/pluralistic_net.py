"""The Pluralistic Image Completion networks (Zheng, Cham, Cai, CVPR 2019), laid out so that the
released checkpoints load with ``strict=True``.

The Dolos dataset's "Pluralistic" subset was made with the authors' CelebA-HQ models
(``latest_net_E.pth`` and ``latest_net_G.pth`` of lyndonzheng/Pluralistic-Inpainting). Those are
plain state dicts of two ``nn.Module`` trees, so a faithful loader is a module tree with the same
attribute names, shapes and forward arithmetic. What the layout must keep (facts read from the
authors' ``model/network.py``, ``model/base_function.py`` and ``model/external_function.py``):

* every convolution except the attention's query is wrapped in a spectral-norm module holding
  the conv as ``module`` with parameters ``weight_u`` (out), ``weight_v`` (in*k*k) and
  ``weight_bar`` in place of ``weight``; residual blocks keep their convolutions both as
  attributes (``conv1``, ``conv2``, ``bypass``) and inside the ``model`` / ``shortcut``
  sequentials, so each appears twice in the state dict, under both names;
* the configuration of the released models: encoder ``ngf=32, z_nc=128, img_f=128, layers=5,
  L=6`` without normalisation, generator ``ngf=32, z_nc=128, img_f=128, L=0, layers=5,
  output_scale=4`` with affine instance norm in its decoder, LeakyReLU(0.1) everywhere except
  inside the attention's residual block (PyTorch's default slope, 0.01), short+long attention
  after the second decoder block (at 1/8 of the input), ``Tanh`` outputs at four scales.

One deliberate difference: the authors' spectral norm runs a power iteration and *writes* ``u`` and
``v`` back on every forward call, even at test time, so an image's completion depends on how many
images went through the network before it. Here each forward runs that one iteration from the
stored ``u`` without writing it back: every call computes what the authors' first call after
loading computes, so a sample's output depends on the sample only (the build's guarantee). For
trained weights ``u`` and ``v`` sit at the power iteration's fixed point and the two agree.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PluralisticEncoder", "PluralisticGenerator", "scale_down"]

_SLOPE = 0.1


def _l2(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / (v.norm() + eps)


class SpectralNorm(nn.Module):
    """A convolution whose weight is ``weight_bar / sigma``, sigma by one power iteration from ``weight_u``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        weight = module.weight
        height = weight.shape[0]
        width = weight[0].numel()
        del module._parameters["weight"]
        module.register_parameter("weight_u", nn.Parameter(_l2(torch.randn(height)), requires_grad=False))
        module.register_parameter("weight_v", nn.Parameter(_l2(torch.randn(width)), requires_grad=False))
        module.register_parameter("weight_bar", nn.Parameter(weight.data))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.module
        w = conv.weight_bar
        flat = w.reshape(w.shape[0], -1)
        v = _l2(flat.t().mv(conv.weight_u))
        u = _l2(flat.mv(v))
        sigma = u.dot(flat.mv(v))
        weight = w / sigma
        if isinstance(conv, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, weight, conv.bias, conv.stride, conv.padding, conv.output_padding,
                                      conv.groups, conv.dilation)
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv(cin: int, cout: int, kernel: int, padding: int, bias: bool = True) -> SpectralNorm:
    return SpectralNorm(nn.Conv2d(cin, cout, kernel, stride=1, padding=padding, bias=bias))


def _up(cin: int, cout: int) -> SpectralNorm:
    return SpectralNorm(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1))


class ResBlock(nn.Module):
    """Pre-activation residual block, optionally average-pooled (``down``)."""

    def __init__(self, cin: int, cout: int, hidden: int, *, norm: bool = False, down: bool = False,
                 slope: float = _SLOPE) -> None:
        super().__init__()
        self.sample = down
        if down:
            self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        act = nn.LeakyReLU(slope)
        self.conv1 = _conv(cin, hidden, 3, 1)
        self.conv2 = _conv(hidden, cout, 3, 1)
        self.bypass = _conv(cin, cout, 1, 0)
        if norm:
            self.model = nn.Sequential(nn.InstanceNorm2d(cin, affine=True), act, self.conv1,
                                       nn.InstanceNorm2d(hidden, affine=True), act, self.conv2)
        else:
            self.model = nn.Sequential(act, self.conv1, act, self.conv2)
        self.shortcut = nn.Sequential(self.bypass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sample:
            return self.pool(self.model(x)) + self.pool(self.shortcut(x))
        return self.model(x) + self.shortcut(x)


class EncoderStart(nn.Module):
    """The first, "optimised" block: conv, activation, conv, pool; shortcut pool then 1x1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, 1)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.bypass = _conv(cin, cout, 1, 0)
        self.model = nn.Sequential(self.conv1, nn.LeakyReLU(_SLOPE), self.conv2, nn.AvgPool2d(2, 2))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), self.bypass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class DecoderBlock(nn.Module):
    """Residual up-sampling block (transposed convolutions, stride 2), instance-normalised."""

    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        act = nn.LeakyReLU(_SLOPE)
        self.conv1 = _conv(cin, hidden, 3, 1)
        self.conv2 = _up(hidden, cout)
        self.bypass = _up(cin, cout)
        self.model = nn.Sequential(nn.InstanceNorm2d(cin, affine=True), act, self.conv1,
                                   nn.InstanceNorm2d(hidden, affine=True), act, self.conv2)
        self.shortcut = nn.Sequential(self.bypass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shortcut(x)


class Output(nn.Module):
    """Activation, reflection pad, 3x3 conv to RGB, tanh."""

    def __init__(self, cin: int, cout: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, 0)
        self.model = nn.Sequential(nn.LeakyReLU(_SLOPE), nn.ReflectionPad2d(1), self.conv1, nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ShortLongAttention(nn.Module):
    """Self-attention over the decoder feature, and the same attention copying encoder features
    ``pre`` of the visible region (``mask`` 1 = visible) into the hole."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 4, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)
        self.model = ResBlock(2 * channels, channels, channels, slope=0.01)

    def forward(self, x: torch.Tensor, pre: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query_conv(x).view(b, -1, h * w)
        attention = self.softmax(torch.bmm(query.permute(0, 2, 1), query))
        out = torch.bmm(x.view(b, -1, h * w), attention.permute(0, 2, 1)).view(b, c, h, w)
        out = self.gamma * out + x
        flow = torch.bmm(pre.view(b, -1, h * w), attention.permute(0, 2, 1)).view(b, -1, h, w)
        flow = self.alpha * (1 - mask) * flow + mask * pre
        return self.model(torch.cat([out, flow], dim=1))


class PluralisticEncoder(nn.Module):
    """Encoder of the visible image: features at five scales and the prior over the hole's latent."""

    def __init__(self, ngf: int = 32, z_nc: int = 128, img_f: int = 128, layers: int = 5, refinements: int = 6) -> None:
        super().__init__()
        self.layers, self.z_nc, self.L = layers, z_nc, refinements
        self.block0 = EncoderStart(3, ngf)
        mult = 1
        for i in range(layers - 1):
            prev, mult = mult, min(2 ** (i + 1), img_f // ngf)
            setattr(self, f"encoder{i}", ResBlock(ngf * prev, ngf * mult, ngf * prev, down=True))
        for i in range(refinements):
            setattr(self, f"infer_prior{i}", ResBlock(ngf * mult, ngf * mult, ngf * mult))
        # the posterior path is used in training only; it is part of the released state dict
        self.posterior = ResBlock(ngf * mult, 2 * z_nc, ngf * mult)
        self.prior = ResBlock(ngf * mult, 2 * z_nc, ngf * mult)

    def forward(self, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(prior mean, prior std, features) for ``visible`` = the image in [-1, 1] times the mask."""
        out = self.block0(visible)
        features = [out]
        for i in range(self.layers - 1):
            out = getattr(self, f"encoder{i}")(out)
            features.append(out)
        for i in range(self.L):
            out = getattr(self, f"infer_prior{i}")(out)
        mu, std = torch.split(self.prior(out), self.z_nc, dim=1)
        return mu, F.softplus(std), features


class PluralisticGenerator(nn.Module):
    """Decoder from the latent ``z`` plus the encoder's deepest feature, with short+long attention."""

    def __init__(self, ngf: int = 32, z_nc: int = 128, img_f: int = 128, layers: int = 5, output_scale: int = 4) -> None:
        super().__init__()
        self.layers, self.output_scale = layers, output_scale
        mult = min(2 ** (layers - 1), img_f // ngf)
        self.generator = ResBlock(z_nc, ngf * mult, ngf * mult)
        for i in range(layers):
            prev, mult = mult, min(2 ** (layers - i - 1), img_f // ngf)
            extra = 3 if i > layers - output_scale else 0
            setattr(self, f"decoder{i}", DecoderBlock(ngf * prev + extra, ngf * mult, ngf * mult))
            if i > layers - output_scale - 1:
                setattr(self, f"out{i}", Output(ngf * mult))
            if i == 1:
                setattr(self, f"attn{i}", ShortLongAttention(ngf * mult))

    def forward(self, z: torch.Tensor, deepest: torch.Tensor, skip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The full-resolution completion in [-1, 1] (the last of the multi-scale outputs)."""
        out = deepest + self.generator(z)
        output = out
        for i in range(self.layers):
            out = getattr(self, f"decoder{i}")(out)
            if i == 1:
                out = getattr(self, f"attn{i}")(out, skip, mask)
            if i > self.layers - self.output_scale - 1:
                output = getattr(self, f"out{i}")(out)
                out = torch.cat([out, output], dim=1)
        return output


def scale_down(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """``mask`` at 1/``factor`` with bilinear, corner-aligned resizing, as the authors' scale pyramid does."""
    h, w = mask.shape[-2:]
    return F.interpolate(mask, size=(h // factor, w // factor), mode="bilinear", align_corners=True)
