import networkx as nx
import pytest
import torch.nn as nn

from bitalloc.graph import branch_of, channel_axis, layer_graph, quantizable_layers

HYPERPRIOR_LAYERS = [f"g_a.{i}" for i in (0, 2, 4, 6)] + [f"g_s.{i}" for i in (0, 2, 4, 6)] + \
    [f"h_a.{i}" for i in (0, 2, 4)] + [f"h_s.{i}" for i in (0, 2, 4)]


def test_hyperprior_layers_named_by_module_path(hyperprior):
    assert sorted(quantizable_layers(hyperprior)) == sorted(HYPERPRIOR_LAYERS)


def test_gdn_is_optional(hyperprior):
    with_gdn = quantizable_layers(hyperprior, gdn=True)
    assert len(with_gdn) == len(HYPERPRIOR_LAYERS) + 6
    assert "g_a.1" in with_gdn and "g_s.5" in with_gdn


def test_entropy_models_are_never_quantizable(hyperprior):
    names = quantizable_layers(hyperprior, gdn=True)
    assert not any(n.startswith(("entropy_bottleneck", "gaussian_conditional")) for n in names)


def test_any_torch_model():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    m(__import__("torch").zeros(1, 3, 5, 5))
    assert list(quantizable_layers(m)) == ["0", "3"]


@pytest.mark.parametrize("name,branch", [("g_a.0", "g_a"), ("h_s.4", "h_s"), ("context_prediction", "context_model"),
                                         ("entropy_parameters.2", "entropy_parameters"), ("head.fc", "head")])
def test_branch_labels(name, branch):
    assert branch_of(name) == branch


def test_channel_axis():
    assert channel_axis(nn.Conv2d(2, 3, 1)) == 0
    assert channel_axis(nn.Linear(2, 3)) == 0
    assert channel_axis(nn.ConvTranspose2d(2, 3, 1)) == 1


def test_hyperprior_graph_is_the_data_flow(hyperprior):
    g = layer_graph(hyperprior)
    assert nx.is_directed_acyclic_graph(g)
    assert set(g.nodes) == set(HYPERPRIOR_LAYERS)
    for a, b in [("g_a.0", "g_a.2"), ("g_a.6", "h_a.0"), ("h_a.4", "h_s.0"), ("g_a.6", "g_s.0"),
                 ("g_s.4", "g_s.6")]:
        assert g.has_edge(a, b), (a, b)
    # Scale Hyperprior: y_hat = round(y) does not depend on h_s
    assert not g.has_edge("h_s.4", "g_s.0")
    assert g.nodes["h_a.2"]["branch"] == "h_a"
    assert g.nodes["g_s.0"]["kind"] == "ConvTranspose2d"
    assert g.nodes["g_a.0"]["order"] == 0


def test_mean_scale_decoder_depends_on_means(mean_scale):
    assert layer_graph(mean_scale).has_edge("h_s.4", "g_s.0")
