"Fast checks of the embedded dataset generator (tiny datasets in tmp folders)."
import json
import multiprocessing as mp

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from clad.core import CladError
from clad.synthetic import (CATEGORIES, dataset_fingerprint, defect_types, ensure_embedded_dataset, render_sample)

SMALL = dict(categories=('grass', 'nut', 'cable'), n_train=3, n_test_good=2, n_test_defect=3)


def test_at_least_five_categories_with_defects():
    assert len(CATEGORIES) >= 5
    assert all(len(defect_types(c)) >= 3 for c in CATEGORIES)


@pytest.mark.parametrize('category', CATEGORIES)
def test_image_changes_only_inside_mask(category):
    for d in ('good',) + defect_types(category):
        for i in range(2):
            img, clean, m = render_sample(category, d, 7, 'test', i, 96)
            assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and m.shape == (96, 96)
            changed = (img != clean).any(-1)
            if d == 'good':
                assert not m.any() and not changed.any()
            else:
                assert m.sum() >= 8, (category, d, i)
                assert not (changed & ~ndimage.binary_dilation(m, iterations=2)).any(), (category, d, i)
                assert changed.sum() >= 0.5 * m.sum()


def test_determinism_and_seed(tmp_path):
    a = ensure_embedded_dataset(tmp_path / 'a', seed=5, image_size=64, **SMALL)
    b = ensure_embedded_dataset(tmp_path / 'b', seed=5, image_size=64, **SMALL)
    c = ensure_embedded_dataset(tmp_path / 'c', seed=6, image_size=64, **SMALL)
    assert dataset_fingerprint(a) == dataset_fingerprint(b) != dataset_fingerprint(c)
    assert (a / 'DATASET.json').read_bytes() == (b / 'DATASET.json').read_bytes()
    assert (a / 'nut/test/good/000.png').read_bytes() == (b / 'nut/test/good/000.png').read_bytes()


def test_layout_counts_and_masks(tmp_path):
    r = ensure_embedded_dataset(tmp_path / 'ds', seed=0, image_size=64, **SMALL)
    m = json.loads((r / 'DATASET.json').read_text())
    assert m['name'] == 'clad_synthetic' and m['seed'] == 0 and m['image_size'] == 64
    assert m['content_sha256'] == dataset_fingerprint(r)
    for c in SMALL['categories']:
        assert len(list((r / c / 'train' / 'good').glob('*.png'))) == 3
        assert len(list((r / c / 'test' / 'good').glob('*.png'))) == 2
        assert not (r / c / 'ground_truth' / 'good').exists()
        for d in defect_types(c):
            imgs = sorted((r / c / 'test' / d).glob('*.png'))
            assert len(imgs) == 1  # ceil(3 / 3 defect types)
            for p in imgs:
                mask = np.asarray(Image.open(r / c / 'ground_truth' / d / f'{p.stem}_mask.png'))
                assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and (mask == 255).sum() > 0
                assert Image.open(p).size == (64, 64) and Image.open(p).mode == 'RGB'


def test_reuse_regenerate_and_refuse(tmp_path):
    r = ensure_embedded_dataset(tmp_path / 'ds', seed=0, image_size=64, **SMALL)
    t = (r / 'DATASET.json').stat().st_mtime_ns
    assert ensure_embedded_dataset(tmp_path / 'ds', seed=0, image_size=64, **SMALL) == r
    assert (r / 'DATASET.json').stat().st_mtime_ns == t  # reused
    (r / 'nut' / 'train' / 'good' / '000.png').unlink()  # damaged -> regenerated
    ensure_embedded_dataset(tmp_path / 'ds', seed=0, image_size=64, **SMALL)
    assert (r / 'nut' / 'train' / 'good' / '000.png').is_file()
    ensure_embedded_dataset(tmp_path / 'ds', seed=1, image_size=64, **SMALL)
    assert json.loads((r / 'DATASET.json').read_text())['seed'] == 1
    (tmp_path / 'user').mkdir(); (tmp_path / 'user' / 'keep.txt').write_text('x')
    with pytest.raises(CladError, match='refusing'):
        ensure_embedded_dataset(tmp_path / 'user', **SMALL)
    assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name or '.old-' in p.name]


def _make(root):
    return str(ensure_embedded_dataset(root, seed=2, image_size=64, **SMALL))


def test_concurrent_generation(tmp_path):
    root = tmp_path / 'race'
    with mp.get_context('spawn').Pool(2) as pool:
        out = pool.map(_make, [root, root])
    assert out == [str(root)] * 2
    m = json.loads((root / 'DATASET.json').read_text())
    assert m['content_sha256'] == dataset_fingerprint(root)
    assert not [p for p in tmp_path.iterdir() if p.name != 'race' and not p.name.endswith('.lock')]


def test_bad_input():
    with pytest.raises(CladError, match='category'): render_sample('screw', 'good', 0, 'test', 0)
    with pytest.raises(CladError, match='defect'): render_sample('nut', 'crack', 0, 'test', 0)
    with pytest.raises(CladError, match='image_size'): ensure_embedded_dataset('/tmp/never', image_size=8)
