"""torch.compile(fullgraph=True): no graph breaks, spikes and logits as in eager, gradients as in eager.

The graph capture (Dynamo and AOTAutograd, which trace the neuron custom operators through their
fake implementations and autograd formulas) is what can break; it is checked on the training and
inference graphs with the ``aot_eager`` backend, which runs the captured graphs without generating
code. One inference check goes through Inductor itself on a tiny model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spikingresformer as sr
from spikingresformer.model import SeqBatchNorm2d, SeqConv2d
from spikingresformer.neurons import LIF, PLIF


def _tiny(neuron: str = "lif", T: int = 2) -> sr.SpikingResformer:
    torch.manual_seed(0)
    return sr.SpikingResformer(planes=(16, 32, 64), num_heads=(1, 2, 4), prologue="cifar", img_size=16,
                               num_classes=10, group_size=16, T=T, depths=(1, 1, 1), neuron=neuron)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("train", [False, True])
def test_no_graph_breaks(train):
    m = _tiny("plif").train(train)
    explanation = torch._dynamo.explain(m)(torch.randn(2, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_compiled_training_step_equals_eager(neuron):
    eager = _tiny(neuron)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    for step in range(2):  # the second step reads the firing-rate buffers the first one set
        logits = []
        for model in (eager, compiled):
            model.train()
            out = model(x)
            F.cross_entropy(out, y).backward()
            logits.append(out.detach())
        torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), (_, b) in zip(eager.named_buffers(), compiled_model.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


def test_compiled_spikes_identical_and_inductor_inference():
    torch.manual_seed(1)
    chain = torch.nn.Sequential(SeqConv2d(3, 8, 3, padding=1), SeqBatchNorm2d(8), PLIF(), SeqConv2d(8, 8, 1), LIF())
    with torch.no_grad():
        for conv in (chain[0], chain[3]):
            conv.weight.normal_(0.0, 1.0)
    chain.eval()
    x = torch.randn(3, 2, 3, 8, 8)
    with torch.no_grad():
        ref = chain(x)
        got = torch.compile(chain, fullgraph=True)(x)  # Inductor, BatchNorm fused around the operators
    assert ref.float().mean() > 0.01
    assert torch.equal(got, ref)
