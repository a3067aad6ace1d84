"""Writes the TorchScript modules the script-network tests load: python3 make_script_modules.py OUT_DIR.

Random weights from a fixed seed; nothing is downloaded."""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


class Net(nn.Module):
    """Convs with and without bias, BatchNorm, in-place ReLU, a residual, max pool, a strided and a
    grouped conv, a conv whose weight forward computes (stays exact), global pooling, a linear head."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.block = Block(8)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.scale = nn.Parameter(torch.randn(12, 12, 1, 1) * 0.3)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = self.pool(self.relu(self.stem(x)))
        x = self.block(x)
        x = F.relu(self.down(x))
        x = F.conv2d(x, self.scale * 2.0)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class Net3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


class NoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :4])


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x, y):
        return self.conv(x) + y


net = Net()
torch.jit.script(net).save(os.path.join(out, "scripted.pt"))
torch.jit.trace(Net().eval(), torch.randn(2, 2, 8, 8)).save(os.path.join(out, "traced.pt"))
torch.jit.script(Net3d()).save(os.path.join(out, "net3d.pt"))
torch.jit.script(NoConv()).save(os.path.join(out, "noconv.pt"))
torch.jit.script(TwoInputs()).save(os.path.join(out, "two_inputs.pt"))
torch.save(net.state_dict(), os.path.join(out, "state_dict.pt"))  # a zip, but not TorchScript
with open(os.path.join(out, "garbage.pt"), "wb") as f:
    f.write(b"not a module at all\n" * 10)
print("wrote", sorted(os.listdir(out)))
