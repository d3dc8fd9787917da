"""Residual building blocks of the SLIM latent transforms (paper supplementary §8, Fig. 9).

CompressAI ships similar blocks with GDN or ReLU; the paper's transforms use GELU in the bottleneck
blocks and leaky ReLU in the resampling blocks, so they are spelled out here.
"""

from torch import Tensor, nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride)


class ResidualBottleneckBlock(nn.Module):
    """1×1 reduce → GELU → 3×3 → GELU → 1×1 restore, plus identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(channels // 2, 1)
        self.conv1 = conv1x1(channels, mid)
        self.conv2 = conv3x3(mid, mid)
        self.conv3 = conv1x1(mid, channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        return x + self.conv3(out)


class ResidualDownsampleBlock(nn.Module):
    """Stride-2 3×3 → leaky ReLU → 3×3 → leaky ReLU → 1×1, plus a strided 1×1 skip."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=2)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.conv3 = conv1x1(out_ch, out_ch)
        self.act = nn.LeakyReLU(inplace=True)
        self.skip = conv1x1(in_ch, out_ch, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        return self.skip(x) + self.conv3(out)


class ResidualUpsampleBlock(nn.Module):
    """Mirror of :class:`ResidualDownsampleBlock` with sub-pixel (pixel-shuffle) upsampling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Sequential(conv3x3(in_ch, out_ch * 4), nn.PixelShuffle(2))
        self.conv2 = conv3x3(out_ch, out_ch)
        self.conv3 = conv1x1(out_ch, out_ch)
        self.act = nn.LeakyReLU(inplace=True)
        self.skip = nn.Sequential(conv1x1(in_ch, out_ch * 4), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        return self.skip(x) + self.conv3(out)


def analysis_transform(in_ch: int, hidden: int, out_ch: int, num_downsamples: int, num_res_blocks: int) -> nn.Sequential:
    layers = [conv3x3(in_ch, hidden)]
    for i in range(num_downsamples):
        layers += [ResidualBottleneckBlock(hidden) for _ in range(num_res_blocks)]
        layers.append(ResidualDownsampleBlock(hidden, out_ch if i == num_downsamples - 1 else hidden))
    return nn.Sequential(*layers)


def synthesis_transform(in_ch: int, hidden: int, out_ch: int, num_upsamples: int, num_res_blocks: int) -> nn.Sequential:
    layers = []
    for i in range(num_upsamples):
        layers.append(ResidualUpsampleBlock(in_ch if i == 0 else hidden, hidden))
        layers += [ResidualBottleneckBlock(hidden) for _ in range(num_res_blocks)]
    layers.append(conv3x3(hidden, out_ch))
    return nn.Sequential(*layers)
