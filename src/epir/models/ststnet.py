"""STSTNet (Liong et al., "Shallow Triple Stream Three-dimensional CNN (STSTNet) for micro-expression
recognition", FG 2019), faithful to the official PyTorch code so that its per-subject weights load unchanged.

Three parallel 3x3 convolution streams (3, 5 and 8 channels, padding 2) on the 28x28x3 input, each followed
by ReLU, BatchNorm, MaxPool(3, stride 3, padding 1) and Dropout(0.5); the streams are concatenated (16
channels), average-pooled by 2 and classified by a Linear(400 -> 3).

The official weights were trained on ``cv2.imread`` output: channels B, G, R = strain, v, u at 0-255. epir's
canonical channel order is u, v, strain, so with ``bgr_input=True`` (default) the model reverses the channel
axis before the first convolution and the official weights see exactly what they were trained on.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from epir.config import TrainConfig
from epir.models.factory import check_rates, check_sizes, register_model
from epir.models.layers import BatchNorm2d, Dropout


class STSTNet(nn.Module):
    """The official STSTNet; parameter and state-dict names match the official code (1,683 parameters)."""

    def __init__(
        self, *, in_channels: int = 3, num_classes: int = 3, bgr_input: bool = True, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.bgr_input = bgr_input
        self.conv1 = nn.Conv2d(in_channels, 3, kernel_size=3, padding=2)
        self.conv2 = nn.Conv2d(in_channels, 5, kernel_size=3, padding=2)
        self.conv3 = nn.Conv2d(in_channels, 8, kernel_size=3, padding=2)
        self.relu = nn.ReLU()
        self.bn1 = BatchNorm2d(3)
        self.bn2 = BatchNorm2d(5)
        self.bn3 = BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=3, padding=1)
        self.avgpool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.dropout = Dropout(p=dropout)
        self.fc = nn.Linear(5 * 5 * 16, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: flow maps, shape (B, 3, 28, 28), channels u, v, strain. Returns (B, 400)."""
        if self.bgr_input:
            x = x.flip(1)
        streams = []
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            streams.append(self.dropout(self.maxpool(bn(self.relu(conv(x))))))
        x = self.avgpool(torch.cat(streams, dim=1))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: flow maps (B, 3, 28, 28). Returns logits (B, num_classes)."""
        return self.fc(self.forward_features(x))


#: The official recipe: Adam 5e-5, batch 256 without shuffling, 800 epochs, raw 0-255 input, no augmentation; the
#: training rows in the dataset's order (``train.order=rows``), as every round before 20 trained it.
STSTNET_RECIPE = TrainConfig(
    epochs=800, batch_size=256, lr=5e-5, optimizer="adam", weight_decay=0.0, shuffle=False, input_norm="none"
)

#: The official recipe in the official code's order (``--recipe official-order``): its loader reads the class folders
#: 0, 1, 2 in turn and does not shuffle, so the rows are sorted by class (``train.order=by-class``; docs/epir-design.md,
#: "Round 20"). Not the default, which every figure before round 20 used.
STSTNET_OFFICIAL_ORDER_RECIPE = replace(STSTNET_RECIPE, order="by-class")


#: Batched on CPU, vmap's convolution and BatchNorm run STSTNet at half the loop's speed (benchmarks/loso_speed.py
#: --models ststnet): one at a time there by default; batched on CUDA.
@register_model(batchable=True, input_size=28, auto_fold_batch={"cpu": 1}, recipe=STSTNET_RECIPE,
                recipes={"official": STSTNET_RECIPE, "official-order": STSTNET_OFFICIAL_ORDER_RECIPE},
                description="STSTNet (Liong et al. 2019), official architecture",
                switches=())  # no optional component (bgr_input orders the input channels)
def ststnet(*, num_classes: int = 3, bgr_input: bool = True, dropout: float = 0.5) -> STSTNet:
    """STSTNet as in the official code (1,683 parameters).

    Args:
        num_classes: output classes.
        bgr_input: reverse the channel axis first (u, v, strain -> the BGR order the official weights expect).
        dropout: dropout before the classifier, the official 0.5 (0 turns it off, e.g. to compare training paths
            exactly).
    """
    check_sizes(num_classes=num_classes)
    check_rates(dropout=dropout)
    return STSTNet(num_classes=num_classes, bgr_input=bgr_input, dropout=dropout)
