"""The CIFAR ResNets of He et al. 2016 (depth 6n+2), the teachers and students of TAKD and Annealing-KD.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2: a 3x3
conv stem, three stages of n BasicBlocks on 32x32, 16x16 and 8x8 maps with width, 2*width and
4*width channels (16, 32, 64 in the papers), global average pooling and one linear layer.

Shortcut choice: where a block changes the shape (the first block of stages 2 and 3) the shortcut
is a 1x1 conv (stride 2) + BN projection -- the paper's option B, as in the TAKD code
(imirzadeh/Teacher-Assistant-Knowledge-Distillation). The paper's own CIFAR numbers use option A
(zero-padded identity, no parameters), so counts here are a little higher than its table:
ResNet-8 78,042 (option A 75,290), ResNet-20 272,474 (269,722), ResNet-110 1,730,714 (1,727,962),
all for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B: a projection only where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-`depth` for 32x32 images; `forward(x)` takes (B, 3, H, W) floats, any memory format."""

    def __init__(self, depth: int, num_classes: int, width: int = 16, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. {DEPTHS}), got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        n = (depth - 2) // 6
        self.depth, self.width = depth, width
        self.stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 init, as the paper
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x.mean((2, 3)))  # global average pool; a reduction, so no .view on channels_last
