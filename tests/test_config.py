"""Config errors: every bad input names the field and the file it came from."""
import json
import pytest
from clad.config import load_config, parse_overrides, project_root, strategy_names
from clad.core import CladError
from clad.models.base import available_models

SEVEN = ('stfpm', 'patchcore', 'padim', 'cfa', 'draem', 'fastflow', 'efficientad')


def write(tmp_path, data, name='run.json'):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_every_model_has_defaults_and_a_paper_config():
    root = project_root()
    for m in SEVEN:
        assert load_config(m).architecture == m
        cfg = load_config(run_json=root / 'configurations' / f'test_{m}_ideal_replay.json')
        assert cfg.architecture == m and cfg.data_path == 'data/mvtec'


def test_layer_order_and_sources(tmp_path):
    run = write(tmp_path, {'architecture': 'stfpm', 'lr': 0.1, 'momentum': 0.5})
    cfg = load_config(run_json=run, overrides={'lr': 0.2})
    assert cfg.lr == 0.2 and cfg.sources['lr'] == 'overrides'
    assert cfg.model_params.momentum == 0.5 and cfg.sources['model_params.momentum'] == str(run)
    assert cfg.sources['num_epochs'].endswith('models/stfpm.json')


@pytest.mark.parametrize('data,msg', [
    ({'mem_sise': 3}, "unknown field 'mem_sise'; did you mean 'mem_size'?"),
    ({'num_epochs': 'ten'}, "field 'num_epochs' must be int, got str"),
    ({'cl': 1}, "field 'cl' must be bool, got int"),
    ({'num_epochs': True}, "field 'num_epochs' must be int, got bool"),
    ({'mem_size': -1}, "field 'mem_size' = -1 is invalid"),
    ({'num_tasks': -2}, "field 'num_tasks' = -2 is invalid"),
    ({'img_size': 0}, "field 'img_size' = 0 is invalid"),
    ({'crp_size': 300, 'img_size': 256}, "field 'crp_size' = 300 is invalid"),
    ({'sample_strategy': 'nosuch'}, "field 'sample_strategy' = 'nosuch' is invalid; expected one of naive, replay"),
    ({'sample_strategy': 'cl'}, "field 'sample_strategy' = 'cl' is not supported by model 'stfpm'"),
    ({'architecture': 'vae'}, "field 'architecture' = 'vae' is not a model; expected one of cfa, draem, efficientad, fastflow, padim, patchcore, "),
    ({'ewc_lambda': -1.0}, "field 'ewc_lambda' = -1.0 is invalid; expected ewc_lambda >= 0"),
    ({'ewc_gamma': 0.0}, "field 'ewc_gamma' = 0.0 is invalid; expected 0 < ewc_gamma <= 1"),
    ({'ewc_gamma': 1.5}, "field 'ewc_gamma' = 1.5 is invalid"),
    ({'lwf_alpha': -0.1}, "field 'lwf_alpha' = -0.1 is invalid; expected lwf_alpha >= 0"),
    ({'derpp_alpha': -0.1}, "field 'derpp_alpha' = -0.1 is invalid; expected derpp_alpha >= 0"),
    ({'derpp_beta': -0.1}, "field 'derpp_beta' = -0.1 is invalid; expected derpp_beta >= 0"),
    ({'mem_size_mb': 0}, "field 'mem_size_mb' = 0.0 is invalid; expected mem_size_mb > 0"),
    ({'replay_jpeg_quality': 101}, "field 'replay_jpeg_quality' = 101 is invalid; expected 1 <= replay_jpeg_quality <= 100"),
    ({'replay_jpeg_quality': 0.5}, "field 'replay_jpeg_quality' must be int, got float"),
    ({'replay_scale': 0}, "field 'replay_scale' = 0.0 is invalid; expected 0 < replay_scale <= 1"),
    ({'replay_scale': 1.01}, "field 'replay_scale' = 1.01 is invalid"),
    ({'f_coreset': 0.1}, "unknown field 'f_coreset'"),  # a PatchCore field in an STFPM run
])
def test_bad_input_names_field_and_file(tmp_path, data, msg):
    run = write(tmp_path, {'architecture': 'stfpm', **data} if 'architecture' not in data else data)
    with pytest.raises(CladError) as e:
        load_config(run_json=run)
    assert msg in str(e.value)
    assert str(run) in str(e.value)


def test_strategy_case_insensitive_and_checked_against_the_model():
    assert load_config('stfpm', overrides={'sample_strategy': 'Naive'}).sample_strategy == 'naive'
    assert load_config('patchcore', overrides={'sample_strategy': 'CL'}).sample_strategy == 'cl'
    with pytest.raises(CladError) as e:
        load_config('stfpm', overrides={'sample_strategy': 'cl'})
    assert str(e.value) == ("overrides: field 'sample_strategy' = 'cl' is not supported by model 'stfpm' (clad.models.stfpm.STFPMModel); "
                            f"it supports {', '.join(available_models()['stfpm'].supported_strategies)}")
    with pytest.raises(CladError, match="'replay' is not supported by model 'padim'"):
        load_config('padim', overrides={'sample_strategy': 'replay'})
    from clad.strategies import STRATEGY_CLASSES
    assert strategy_names() == tuple(STRATEGY_CLASSES)  # no list of its own


def test_new_strategy_fields_default_and_load(tmp_path):
    cfg = load_config('stfpm')  # the weights of the added terms come from the model's JSON (its loss's scale), the rest from common_param
    assert (cfg.ewc_lambda, cfg.ewc_gamma, cfg.lwf_alpha, cfg.derpp_alpha, cfg.derpp_beta, cfg.mem_size_mb,
            cfg.replay_jpeg_quality, cfg.replay_scale) == (1e4, 1.0, 10.0, 10.0, 0.5, 1.0, 75, 0.5)
    assert cfg.sources['ewc_lambda'].endswith('models/stfpm.json') and cfg.sources['derpp_beta'].endswith('common_param.json')
    weights = {m: (c.ewc_lambda, c.lwf_alpha, c.derpp_alpha) for m in ('stfpm', 'draem', 'fastflow', 'cfa', 'efficientad')
               for c in [load_config(m)]}
    assert weights == dict(stfpm=(1e4, 10, 10), draem=(1e4, 10, 10), fastflow=(1e3, 1e4, 1e4), cfa=(10, 1e6, 1e6),
                           efficientad=(1e6, 1e3, 1e3))
    run = write(tmp_path, {'architecture': 'stfpm', 'ewc_lambda': 5, 'replay_scale': 1, 'mem_size_mb': 0.25})
    cfg = load_config(run_json=run)
    assert (cfg.ewc_lambda, cfg.replay_scale, cfg.mem_size_mb) == (5.0, 1.0, 0.25) and cfg.sources['ewc_lambda'] == str(run)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(CladError, match='config file not found'):
        load_config(run_json=tmp_path / 'nope.json')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"lr": ')
    with pytest.raises(CladError, match='not valid JSON'):
        load_config(run_json=bad)
    arr = write(tmp_path, [1, 2])
    with pytest.raises(CladError, match='expected a JSON object'):
        load_config(run_json=arr)


def test_overrides_are_json_typed():
    o = parse_overrides(['num_tasks=2', 'pretrained=false', 'tasks=["a"]', 'device=cpu'])
    assert o == {'num_tasks': 2, 'pretrained': False, 'tasks': ['a'], 'device': 'cpu'}
    with pytest.raises(CladError, match="field 'num_tasks' must be int"):
        load_config('stfpm', overrides={'num_tasks': '2x'})


def test_each_model_runs_its_declared_default_strategy():
    from clad.models.base import MODEL_REGISTRY, model_class
    expected = dict(stfpm='replay', patchcore='cl', padim='cl', cfa='replay', draem='replay', fastflow='replay', efficientad='replay')
    for m in SEVEN:
        cls = model_class(m)
        assert MODEL_REGISTRY[m] is cls and cls.default_strategy == expected[m]
        cfg = load_config(m)
        assert cfg.sample_strategy == expected[m]
        assert cfg.sources['sample_strategy'] == f'model default ({cls.__module__}.{cls.__qualname__}.default_strategy)'
        assert cfg.sample_strategy in cls.supported_strategies and type(cfg.model_params) is cls.Params
    assert 'sample_strategy' not in json.loads((project_root() / 'configurations' / 'common_param.json').read_text())


def test_a_layer_that_names_a_strategy_wins_over_the_model_default(tmp_path):
    assert load_config('patchcore', overrides={'sample_strategy': 'naive'}).sample_strategy == 'naive'
    run = write(tmp_path, {'architecture': 'padim', 'sample_strategy': 'cumulative'})
    cfg = load_config(run_json=run)
    assert cfg.sample_strategy == 'cumulative' and cfg.sources['sample_strategy'] == str(run)
    paper = load_config(run_json='test_stfpm_ideal_replay.json')
    assert paper.sample_strategy == 'replay' and paper.sources['sample_strategy'].endswith('test_stfpm_ideal_replay.json')


@pytest.mark.parametrize('text,expected', [
    ('mono,poly', ['mono', 'poly']),
    (' mono , poly ', ['mono', 'poly']),
    ('bottle+cable,screw', [['bottle', 'cable'], 'screw']),
    ('0,2', [0, 2]),
    ('["mono", "poly"]', ['mono', 'poly']),  # JSON still works
])
def test_list_fields_accept_comma_separated_text(text, expected):
    cfg = load_config('stfpm', overrides=parse_overrides([f'task_order={text}']))
    assert cfg.task_order == expected and cfg.sources['task_order'] == 'overrides'


def test_clad_run_set_list_and_layers():
    from clad.run import config_from_args, parse_args
    cfg = config_from_args(parse_args(['--model', 'stfpm', '--set', 'task_order=mono,poly', '--set', 'layers=layer2,layer3']))
    assert cfg.task_order == ['mono', 'poly'] and cfg.layers == ['layer2', 'layer3']
    with pytest.raises(CladError, match="field 'task_order' must be list, got int"):
        load_config('stfpm', overrides=parse_overrides(['task_order=3']))
