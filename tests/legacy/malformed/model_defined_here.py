import os
import torch
from pathlib import Path

Path(os.environ.get("LEGACY_TEST_MARKER", "marker.txt")).write_text("imported")
classes = ["nuc", "er"]


class TinyNet(torch.nn.Module):
    def __init__(self, in_channels, out_channels, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


model = TinyNet(1, len(classes), width=8)

if __name__ == "__main__":
    Path(os.environ.get("LEGACY_TEST_MARKER", "marker.txt") + ".main").write_text("main ran")
