"""count_macs: per-layer multiply-accumulates against hand-computed counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bitalloc.macs import count_macs, layer_macs


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 5, stride=2, padding=2, output_padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.up(self.grouped(self.conv(x)))  # (4, 32, 32)
        return self.fc(y)  # linear over the last axis: (4, 32, 10)


def test_counts_equal_hand_computed_layers():
    net = _Net().train()
    macs = count_macs(net, (3, 32, 32))
    assert macs == {
        "conv": (8 * 16 * 16) * 3 * 3 * 3,  # outputs x in_channels x kernel: 55,296
        "grouped": (8 * 16 * 16) * (8 // 4) * 3 * 3,  # 2 input channels per group: 36,864
        "up": (8 * 16 * 16) * 4 * 5 * 5,  # inputs x out_channels x kernel: 204,800
        "fc": (4 * 32 * 10) * 32,  # outputs x in_features: 40,960
    }
    assert count_macs(net, (2, 3, 32, 32)) == macs  # per sample
    assert net.training  # mode restored


def test_transposed_conv_count_is_the_scatter_it_computes():
    """Brute force: the transposed conv as an explicit scatter, counting one MAC per (input, output channel,
    kernel tap)."""
    up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(1, 3, 5, 4)
    ci, h, w = x.shape[1:]
    out = torch.zeros(1, 2, 2 * h + 2, 2 * w + 2)
    count = 0
    for c in range(ci):
        for i in range(h):
            for j in range(w):
                for o in range(2):
                    for ki in range(3):
                        for kj in range(3):
                            out[0, o, 2 * i + ki, 2 * j + kj] += x[0, c, i, j] * up.weight[c, o, ki, kj]
                            count += 1
    expected = out[:, :, 1:1 + 2 * h, 1:1 + 2 * w] + up.bias.view(1, -1, 1, 1)  # crop padding, keep output_padding
    assert torch.allclose(up(x), expected, atol=1e-5)
    assert layer_macs(up, x, up(x)) == count == count_macs(nn.Sequential(up), (3, 5, 4))["0"]


def test_lic_model_counts_every_layer_even_with_uncalibrated_activation_quantizers(hyperprior):
    from bitalloc.graph import quantizable_layers
    from bitalloc.plan import BitPlan
    from bitalloc.quant import apply_plan

    fp = count_macs(hyperprior, (3, 64, 64))
    assert set(fp) == set(quantizable_layers(hyperprior)) and all(v > 0 for v in fp.values())
    q = apply_plan(hyperprior, BitPlan.uniform(quantizable_layers(hyperprior), 8, act_bits=8))
    assert count_macs(q, (3, 64, 64)) == fp
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(torch.zeros(1, 3, 64, 64))  # the count left the quantizers uncalibrated
    with pytest.raises(ValueError, match="input_size must be"):
        count_macs(hyperprior, (64,))
    with pytest.raises(TypeError, match="not ReLU"):
        layer_macs(nn.ReLU(), torch.zeros(1), torch.zeros(1))
