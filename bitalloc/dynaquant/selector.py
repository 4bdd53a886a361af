"""The dynamic bit-width selector: a light network choosing each layer's bit-width per image.

DynaQuant (Bao et al., arXiv 2511.07903): features pooled to 5x5, an MLP with dropout 0.2, Gumbel-softmax over
the candidate bit-widths during training, argmax at inference. Here::

    features (N, C, H, W) --1x1 conv--> (N, 8, H, W) --adaptive avg pool--> (N, 8, 5, 5) --flatten--> 200
        --Linear--> 32 --ReLU--> Dropout(0.2) --Linear--> (N, L, K) logits    (L layers, K candidates)

The 1x1 reduction keeps the selector at a few thousand parameters (it runs in float and is not counted in
the weight bits). Training uses the straight-through Gumbel-softmax (``hard=True``: one-hot choices in the
forward pass, the soft relaxation's gradient in the backward), so the network trains on the very
configurations it will run; inference takes the argmax of the logits (eval mode: no dropout, no noise), a
deterministic function of the features, which is what lets encoder and decoder agree without side
information.

``max_bits`` masks every candidate above the cap (its logit is set to -inf) before both the Gumbel sampling
and the argmax. ``bit_bias`` (a buffer, set by the post-training calibration) subtracts ``bit_bias * b`` from
the logit of candidate b: a penalty applied at decision time that moves the average bit-width to a target
without retraining.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BitSelector"]


class BitSelector(nn.Module):
    def __init__(self, in_channels: int, num_layers: int, candidate_bits: tuple[int, ...], *, reduced: int = 8,
                 hidden: int = 32, pool: int = 5, dropout: float = 0.2, max_bits: int | None = None):
        super().__init__()
        self.candidate_bits = tuple(int(b) for b in candidate_bits)
        self.num_layers, self.pool = int(num_layers), int(pool)
        self.reduce = nn.Conv2d(in_channels, reduced, 1)
        self.mlp = nn.Sequential(nn.Linear(reduced * pool * pool, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_layers * len(self.candidate_bits)))
        nn.init.zeros_(self.mlp[-1].weight)  # start indifferent between candidates
        with torch.no_grad():  # ... with a mild preference for the highest precision (the float model's state)
            self.mlp[-1].bias.copy_(torch.linspace(0.0, 1.0, len(self.candidate_bits)).repeat(num_layers))
        self.register_buffer("bits_tensor", torch.tensor(self.candidate_bits, dtype=torch.float32))
        self.register_buffer("bit_bias", torch.tensor(0.0))
        self.max_bits = max_bits

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.reduce(features), self.pool).flatten(1)
        out = self.mlp(h).view(-1, self.num_layers, len(self.candidate_bits))
        out = out - self.bit_bias * self.bits_tensor
        if self.max_bits is not None:
            allowed = self.bits_tensor <= self.max_bits
            if not bool(allowed.any()):
                raise ValueError(f"max_bits={self.max_bits} is below every candidate {self.candidate_bits}")
            out = out.masked_fill(~allowed, float("-inf"))
        return out

    def forward(self, features: torch.Tensor, tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(choices, probs), both (N, L, K): one-hot choices (Gumbel straight-through in training, argmax in
        eval) and the softmax probabilities (for the expected bit cost)."""
        logits = self.logits(features)
        probs = logits.softmax(dim=-1)
        if self.training:
            choices = F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
        else:
            choices = F.one_hot(logits.argmax(dim=-1), len(self.candidate_bits)).to(logits.dtype)
        return choices, probs
