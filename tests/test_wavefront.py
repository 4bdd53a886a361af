"""Wavefront coding of the context model (bitalloc.models.wavefront): the order is causal, the stream decodes to
what CompressAI's raster-order coder gives, and masked-out weight values change nothing."""

import copy

import pytest
import torch
from compressai.layers import MaskedConv2d
from compressai.models import Cheng2020Anchor

from bitalloc.evaluation import compress_image, psnr
from bitalloc.models import Cheng2020AnchorWavefront, build_model, wavefronts


@pytest.mark.parametrize("height, width", [(1, 1), (1, 6), (5, 1), (4, 7), (8, 3)])
def test_every_position_once_and_every_context_position_in_an_earlier_wavefront(height, width):
    mask = MaskedConv2d(1, 1, kernel_size=5, padding=2, mask_type="A").mask[0, 0]  # CompressAI's own mask
    reads = [(dy - 2, dx - 2) for dy in range(5) for dx in range(5) if mask[dy, dx]]
    assert len(reads) == 12
    front = {}
    for t, (rows, cols) in enumerate(wavefronts(height, width)):
        for h, w in zip(rows.tolist(), cols.tolist()):
            assert (h, w) not in front
            front[(h, w)] = t
    assert sorted(front) == [(h, w) for h in range(height) for w in range(width)]
    expected = 3 * (height - 1) + width if width >= 3 else len({3 * h + w for h, w in front})
    assert len(set(front.values())) == expected  # no wavefront is empty
    for (h, w), t in front.items():
        for dy, dx in reads:
            if (h + dy, w + dx) in front:
                assert front[(h + dy, w + dx)] < t


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(3)
    small = torch.rand(1, 3, 12, 16, generator=g)
    return torch.nn.functional.interpolate(small, size=(96, 128), mode="bilinear", align_corners=False)[0]


def _model(cls, masked: bool):
    torch.manual_seed(0)
    model = cls(N=16).eval()
    if masked:  # what a trained checkpoint holds: forward has masked the stored weight
        model.context_prediction.weight.data *= model.context_prediction.mask
    model.update(force=True)
    return model


def test_the_stream_decodes_to_what_the_raster_order_coder_gives(image):
    ours, theirs = _model(Cheng2020AnchorWavefront, True), _model(Cheng2020Anchor, True)
    assert type(build_model("cheng2020-anchor", 4)) is Cheng2020AnchorWavefront
    a, b = compress_image(ours, image), compress_image(theirs, image)
    # the same symbols in another order, parameters from batched instead of single-position convolutions
    assert abs(a["num_bytes"] - b["num_bytes"]) <= max(2, 0.01 * b["num_bytes"])
    assert psnr(image[None], a["x_hat"]) == pytest.approx(psnr(image[None], b["x_hat"]), abs=1e-3)
    assert (a["x_hat"] - b["x_hat"]).abs().max() < 1e-3
    again = compress_image(ours, image)
    assert again["num_bytes"] == a["num_bytes"] and torch.equal(again["x_hat"], a["x_hat"])  # deterministic


def test_weight_values_at_masked_positions_change_nothing(image):
    fresh = _model(Cheng2020AnchorWavefront, False)  # never ran forward: masked positions hold random values
    assert (fresh.context_prediction.weight * (1 - fresh.context_prediction.mask)).abs().max() > 0
    masked = copy.deepcopy(fresh)
    masked.context_prediction.weight.data *= masked.context_prediction.mask
    a, b = compress_image(fresh, image), compress_image(masked, image)
    assert a["num_bytes"] == b["num_bytes"] and torch.equal(a["x_hat"], b["x_hat"])
