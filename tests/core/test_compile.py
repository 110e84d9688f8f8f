"""The adapted layer compiles as one graph (``fullgraph=True``: any graph break is an error).

Checked with the ``aot_eager`` backend: it traces through dynamo and AOTAutograd exactly as inductor does, so a
graph break fails here too, without inductor's C++ compilation (about a minute on this CPU).
"""

from __future__ import annotations

import pytest
import torch

from .test_layer import adapted_linear


@pytest.mark.parametrize("dropout, training", [(0.0, False), (0.3, True)])
def test_layer_compiles_without_graph_breaks_and_matches_eager(dropout, training):
    torch._dynamo.reset()
    layer = adapted_linear(dropout=dropout).train(training)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 12)
    results = []
    for module in (compiled, layer):
        torch.manual_seed(0)  # the same dropout mask in both runs
        y = module(x)
        grads = torch.autograd.grad(y.pow(2).sum(), list(layer.adapters.parameters()))
        results.append((y, grads))
    (y_compiled, grads_compiled), (y_eager, grads_eager) = results
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-6, atol=1e-6)
    for grad_compiled, grad_eager in zip(grads_compiled, grads_eager, strict=True):
        torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-5, atol=1e-6)
    if training:
        torch.manual_seed(1)
        assert not torch.equal(compiled(x), y_eager)  # dropout is live in the compiled graph
