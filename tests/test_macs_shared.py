"""One MAC counter: DynaQuant's layers and the DynaQuant study count through bitalloc.macs."""


import torch

from bitalloc.dynaquant import DynaQuantModel
from bitalloc.graph import quantizable_layers
from bitalloc.macs import count_macs
from conftest import load_study



def _hand_macs(model: torch.nn.Module, height: int, width: int) -> dict[str, float]:
    """The formula the study and DynaQuant used before they shared bitalloc.macs, written out by hand."""
    h, w, out = height, width, {}
    for name, m in quantizable_layers(model).items():  # g_a, h_a, h_s, g_s in data-flow order
        if name == "h_a.0":
            h, w = height // 16, width // 16
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.ConvTranspose2d):
            out[name] = float(m.in_channels * h * w * (m.out_channels // m.groups) * k)
            h, w = h * m.stride[0], w * m.stride[1]
        else:
            kh, kw = m.kernel_size
            h = (h + 2 * m.padding[0] - kh) // m.stride[0] + 1
            w = (w + 2 * m.padding[1] - kw) // m.stride[1] + 1
            out[name] = float(m.out_channels * h * w * (m.in_channels // m.groups) * k)
    return out


def test_study_and_dynaquant_mac_counts_equal_count_macs(hyperprior):
    model = hyperprior.eval()
    study = load_study("dynaquant_study")
    counted = count_macs(model, (3, 128, 192))
    assert study.layer_macs(model, 128, 192) == _hand_macs(model, 128, 192) == \
        {n: float(counted[n]) for n in quantizable_layers(model)}
    dq = DynaQuantModel(model, (4, 6, 8)).eval()
    with torch.no_grad():
        dq(torch.rand(2, 3, 128, 192))  # per image, whatever the batch
    assert {n: dq.layer(n).macs for n in dq.layer_names} == {n: float(counted[n]) for n in dq.layer_names}
