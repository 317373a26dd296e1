"`outputs(images)` of the trained models (LwF, DER++): shapes, gradients, determinism, modes (CPU, tiny random-init models)."
import pytest
import torch

from clad.models.base import AnomalyModel
from clad.models.cfa import CFAModel
from clad.models.draem import DRAEMModel
from clad.models.efficientad import EfficientADModel
from clad.models.fastflow import FastflowModel
from clad.models.padim import PadimModel
from clad.models.patchcore import PatchcoreModel
from clad.models.stfpm import STFPMModel


# name: (builder, input side, expected output shapes for a batch of 2, frozen modules, trainable modules)
CASES = {
    'stfpm': (lambda: STFPMModel('resnet18', pretrained=False), 32,
              [(2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)], ['teacher'], ['student']),
    'fastflow': (lambda: FastflowModel(32, 'resnet18', pretrained=False, flow_steps=2), 32,
                 [(2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)], ['feature_extractor'], ['norms', 'fast_flow_blocks']),
    'cfa': (lambda: CFAModel('resnet18', pretrained=False), 32, [(2, 448, 8, 8)], ['extractor'], ['descriptor']),
    'draem': (lambda: DRAEMModel(base_width=8, disc_width=8), 32, [(2, 3, 32, 32), (2, 2, 32, 32)], [],
              ['reconstructive_subnetwork', 'discriminative_subnetwork']),
    # the unpadded PDN needs at least ~64 px (32 px leaves no feature grid)
    'efficientad': (lambda: EfficientADModel(out_channels=8, pretrained=False), 64, [(2, 16, 8, 8), (2, 8, 8, 8)],
                    ['teacher'], ['student', 'ae']),
}


def _images(side, seed=1):
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _generators(model):
    return {k: v.get_state() for k, v in vars(model).items() if isinstance(v, torch.Generator)}


@pytest.mark.parametrize('name', list(CASES))
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_outputs(name, mode):
    build, side, shapes, frozen, trainable = CASES[name]
    model = build().train(mode == 'train')
    assert type(model).has_outputs and model.has_outputs
    x = _images(side)
    rng, gens = torch.get_rng_state(), _generators(model)
    outs = model.outputs(x)
    assert isinstance(outs, list) and [tuple(o.shape) for o in outs] == shapes
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() and o.requires_grad for o in outs)
    assert torch.equal(torch.get_rng_state(), rng), 'outputs() drew from the global RNG'
    assert all(torch.equal(g, _generators(model)[k]) for k, g in gens.items()), "outputs() drew from the model's generator"
    again = model.outputs(x)
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert model.training == (mode == 'train')
    sum(o.pow(2).mean() + o.mean() for o in outs).backward()
    for m in frozen:
        assert all(p.grad is None for p in getattr(model, m).parameters()), f'{m} got a gradient'
    for m in trainable:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, m).parameters()), f'{m} got no gradient'


def test_outputs_follow_the_loss():
    "The outputs are the tensors the losses compare."
    x = _images(32)
    m = STFPMModel('resnet18', pretrained=False).train()
    assert torch.allclose(m.loss(m(x)[0], m.outputs(x)), m.training_step({'image': x}), atol=1e-5)
    f = FastflowModel(32, 'resnet18', pretrained=False, flow_steps=2).eval()
    assert all(torch.equal(a, b) for a, b in zip(f.outputs(x), f(x)[0]))
    c = CFAModel('resnet18', pretrained=False)
    assert torch.equal(c.outputs(x)[0], c(x))
    d = DRAEMModel(base_width=8, disc_width=8).eval()
    assert all(torch.equal(a, b) for a, b in zip(d.outputs(x), d(x)))
    e = EfficientADModel(out_channels=8, pretrained=False).train()
    s, a = e.outputs(_images(64))
    e.eval(); s2, a2 = e.outputs(_images(64))
    assert torch.equal(s, s2) and torch.equal(a, a2)  # dropout off: the same in both modes
    assert e.ae.training is False and e.train().ae.training is True


def test_memory_models_and_base_have_none():
    assert not AnomalyModel.has_outputs and not PatchcoreModel.has_outputs and not PadimModel.has_outputs
    with pytest.raises(NotImplementedError, match='has no outputs'):
        AnomalyModel().outputs(torch.zeros(1, 3, 8, 8))


def test_outputs_under_no_grad_for_a_frozen_copy():
    "LwF runs the previous model under no_grad: outputs then carry no graph."
    m = STFPMModel('resnet18', pretrained=False).eval()
    with torch.no_grad(): outs = m.outputs(_images(32))
    assert not any(o.requires_grad for o in outs)
