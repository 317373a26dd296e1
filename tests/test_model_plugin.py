"""Adding a model needs only its code and configurations/models/<name>.json: the registry is the one list of models.

The model here is registered from outside the package (as a plugin would be) in a project root that holds nothing but
common_param.json and the model's JSON; configuration, strategy check and the experiment loop find everything else on
the class.
"""
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clad.models
from clad.config import load_config, project_root
from clad.core import CladError
from clad.data import write_tiny_mvtec
from clad.models.base import MODEL_REGISTRY, AnomalyModel, available_models, build_model, model_class, register_model


@dataclass
class TinyextParams:
    "The plugin's own parameter (set in configurations/models/tinyext.json)."
    hidden: int = 2 # channels of the 1×1 bottleneck


class TinyextModel(AnomalyModel):
    "A 1×1-convolution autoencoder on the image: loss = reconstruction MSE, map = per-pixel reconstruction error."
    Params = TinyextParams
    kind = 'trained'
    supported_strategies = ('naive', 'replay')
    default_strategy = 'replay'

    def __init__(self, hidden:int=2, lr:float=1e-2, seed:int=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc, self.dec = nn.Conv2d(3, hidden, 1), nn.Conv2d(hidden, 3, 1)
        self.lr = lr

    @classmethod
    def from_config(cls, cfg): return cls(hidden=cfg.model_params.hidden, lr=cfg.lr, seed=cfg.seed)

    def _error(self, x): return (self.dec(torch.relu(self.enc(x))) - x).pow(2).mean(1)  # [B,H,W]

    def training_step(self, batch): return self._error(batch['image'].to(self.device)).mean()

    def configure_optimizer(self): return torch.optim.Adam(self.parameters(), lr=self.lr), None

    def _predict(self, images):
        maps = self._error(images)
        return maps.flatten(1).amax(1), maps


@pytest.fixture
def tinyext():
    "TinyextModel registered as 'tinyext' for the test, and removed afterwards (the registry is process-wide)."
    register_model('tinyext')(TinyextModel)
    yield TinyextModel
    MODEL_REGISTRY.pop('tinyext', None)


@pytest.fixture
def root(tmp_path):
    "A project root with only the shared defaults and the plugin's JSON."
    (tmp_path/'configurations'/'models').mkdir(parents=True)
    shutil.copy(project_root()/'configurations'/'common_param.json', tmp_path/'configurations'/'common_param.json')
    (tmp_path/'configurations'/'models'/'tinyext.json').write_text(json.dumps(
        {'architecture': 'tinyext', 'hidden': 3, 'lr': 0.01, 'num_epochs': 2}))
    return tmp_path


TINY = dict(img_size=32, num_epochs=2, batch_size=4, mem_size=6, gallery_size=1, device='cpu', patience=5, num_tasks=2,
            amp=False)


def test_a_plugin_model_runs_an_experiment(tinyext, root):
    from clad.experiment import Experiment
    data = root/'data'
    write_tiny_mvtec(data, categories=['bottle', 'cable'], n_train=8, n_test_good=3, n_test_defect=3, size=32)
    cfg = load_config('tinyext', overrides=dict(TINY, data_path=str(data), output_dir=str(root/'output')), root=root)
    assert cfg.sample_strategy == 'replay' and 'TinyextModel.default_strategy' in cfg.sources['sample_strategy']
    assert type(cfg.model_params) is TinyextParams and cfg.model_params.hidden == 3
    assert cfg.sources['model_params.hidden'].endswith('models/tinyext.json')
    assert type(build_model(cfg)) is TinyextModel and 'tinyext' in available_models()
    res = Experiment(cfg, progress=False).run()
    m = res['matrices']['image_auroc']
    assert len(m) == 2 and all(len(r) == 2 for r in m)
    assert all(v is not None for v in m[1])  # after the last step every task has been evaluated


def test_unknown_model_and_unsupported_strategy_are_named(tinyext, root):
    with pytest.raises(CladError) as e:
        load_config('nosuchmodel', root=root)
    assert "'nosuchmodel' is not a model" in str(e.value) and 'tinyext' in str(e.value) and 'stfpm' in str(e.value)
    with pytest.raises(CladError) as e:
        load_config('tinyext', overrides={'sample_strategy': 'cumulative'}, root=root)
    assert str(e.value) == ("overrides: field 'sample_strategy' = 'cumulative' is not supported by model 'tinyext' "
                            f"({__name__}.TinyextModel); it supports naive, replay")
    with pytest.raises(CladError, match="unknown field 'width'"):  # parameters are checked against the plugin's Params
        load_config('tinyext', overrides={'width': 4}, root=root)


def test_register_model_requires_params_and_a_supported_default():
    class NoParams(TinyextModel): Params = None
    with pytest.raises(CladError, match='NoParams.Params must be the dataclass'):
        register_model('noparams')(NoParams)
    class BadDefault(TinyextModel): default_strategy = 'cl'
    with pytest.raises(CladError, match="default_strategy 'cl'"):
        register_model('baddefault')(BadDefault)
    assert 'noparams' not in MODEL_REGISTRY and 'baddefault' not in MODEL_REGISTRY


def test_the_package_models_are_discovered_not_listed():
    modules = sorted(p.stem for p in Path(clad.models.__file__).parent.glob('*.py') if p.stem not in ('__init__', 'base'))
    assert {'stfpm', 'patchcore', 'padim', 'cfa', 'draem', 'fastflow', 'efficientad'} <= set(modules)  # today's seven, at least
    found = {n: c for n, c in available_models().items() if c.__module__.startswith('clad.models.')}
    assert sorted(found) == modules
    for name, cls in found.items():
        assert cls.__module__ == f'clad.models.{name}' and model_class(name.upper()) is cls
        assert cls.Params.__module__ == cls.__module__  # the parameters live with the model
        assert cls.default_strategy in cls.supported_strategies
