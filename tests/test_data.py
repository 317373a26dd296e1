"Tests of clad.data: MVTec reader errors, task streams, validation split, dataset items."
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clad.core import CladError
from clad.data import (CLAD_ORDER, MVTEC_CLASSES, AnomalyDataset, ImageTransform, dataset_info, list_anomaly_sources,
                       list_categories, list_penalty_images, make_task_stream, read_image, scan_category,
                       split_validation, write_tiny_mvtec)


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_mvtec(tmp_path/'tiny', categories=('bottle', 'carpet', 'zipper'), n_train=10,
                            masks=('bottle', 'zipper'), defects=('crack', 'hole'))


# --- errors -------------------------------------------------------------------------------------------------------

def test_missing_root_names_path_layout_and_source(tmp_path):
    with pytest.raises(CladError) as e: list_categories(tmp_path/'nope')
    msg = str(e.value)
    assert str(tmp_path/'nope') in msg and 'train/good' in msg and 'mvtec.com' in msg


def test_root_without_categories(tmp_path):
    (tmp_path/'junk').mkdir()
    with pytest.raises(CladError, match='train/good'): make_task_stream(tmp_path)


def test_missing_category(tiny):
    with pytest.raises(CladError, match=r"'cable'.*available: \['bottle', 'carpet', 'zipper'\]"): scan_category(tiny, 'cable')


def test_missing_mask_names_file(tiny):
    (tiny/'bottle'/'ground_truth'/'hole'/'001_mask.png').unlink()
    with pytest.raises(CladError, match='001_mask.png'): scan_category(tiny, 'bottle')


def test_missing_test_folder(tiny):
    import shutil; shutil.rmtree(tiny/'carpet'/'test')
    with pytest.raises(CladError, match='test'): scan_category(tiny, 'carpet')


def test_unreadable_image(tiny):
    p = tiny/'bottle'/'test'/'good'/'000.png'; p.write_bytes(b'garbage')
    with pytest.raises(CladError, match='000.png'): read_image(p)
    recs = scan_category(tiny, 'bottle')['test']
    ds = AnomalyDataset(recs, ImageTransform(16))
    with pytest.raises(CladError, match='good/000.png'): ds[[r.path for r in recs].index(p)]


@pytest.mark.parametrize('order,match', [(['cable'], 'available'), ([7], 'out of range'), ([['bottle', 'bottle']], 'twice'),
                                         ([1.5], 'entries must be'), ([], 'at least one')])
def test_bad_task_order(tiny, order, match):
    with pytest.raises(CladError, match=match): make_task_stream(tiny, order)


def test_num_tasks_too_large(tiny):
    with pytest.raises(CladError, match='only 3'): make_task_stream(tiny, num_tasks=4)
    with pytest.raises(CladError, match='num_tasks'): make_task_stream(tiny, num_tasks=0)


def test_aux_dataset_errors(tmp_path):
    with pytest.raises(CladError, match='dtd') as e: list_anomaly_sources(tmp_path/'dtd')
    assert 'procedural' in str(e.value)
    with pytest.raises(CladError, match='tiny-imagenet-200.zip'): list_penalty_images(tmp_path/'tin')
    with pytest.raises(CladError): list_anomaly_sources('')


# --- task streams -------------------------------------------------------------------------------------------------

def test_default_order_alphabetical(tiny):
    s = make_task_stream(tiny)
    assert [t.name for t in s] == ['bottle', 'carpet', 'zipper'] and [t.index for t in s] == [0, 1, 2]
    assert [t.has_masks for t in s] == [True, False, True]


def test_clad_order_when_all_objects_present(tmp_path):
    root = write_tiny_mvtec(tmp_path/'m', categories=CLAD_ORDER + ['carpet'], n_train=2, n_test_good=1, n_test_defect=1, size=8)
    s = make_task_stream(root)
    assert [t.name for t in s] == CLAD_ORDER  # the 10 objects, original order; textures only by name
    assert [t.name for t in make_task_stream(root, [0, 9, 'carpet'])] == ['hazelnut', 'screw', 'carpet']


def test_merged_tasks_and_num_tasks(tiny):
    s = make_task_stream(tiny, [['bottle', 2], 'carpet', '1'], num_tasks=2)
    assert [t.name for t in s] == ['bottle+zipper', 'carpet']
    assert s[0].categories == ['bottle', 'zipper']
    assert {r.category for r in s[0].train + s[0].val + s[0].test} == {'bottle', 'zipper'}
    assert len(s[0].train) + len(s[0].val) == 20 and len(s[0].test) == 2 * (2 + 4)


def test_has_masks_option(tiny):
    assert not any(t.has_masks for t in make_task_stream(tiny, has_masks=False))
    with pytest.raises(CladError, match="'carpet'"): make_task_stream(tiny, has_masks=True)
    assert make_task_stream(tiny, ['bottle'], has_masks=True)[0].has_masks


def test_records(tiny):
    s = scan_category(tiny, 'zipper')
    assert all(r.label == 0 and r.defect == 'good' and r.mask_path is None for r in s['train'])
    defects = [r for r in s['test'] if r.label == 1]
    assert {r.defect for r in defects} == {'crack', 'hole'} and all(r.mask_path.exists() for r in defects)


# --- validation split ---------------------------------------------------------------------------------------------

def test_val_split_deterministic_disjoint_seeded(tiny):
    a = make_task_stream(tiny, seed=0); b = make_task_stream(tiny, seed=0)
    for ta, tb in zip(a, b):
        assert ta.val == tb.val and ta.train == tb.train and ta.test == tb.test
        assert not set(ta.train) & set(ta.val) and len(ta.train) + len(ta.val) == 10 and len(ta.val) == 1
        assert all(r.label == 0 for r in ta.val)
    vals = {tuple(r.path for r in make_task_stream(tiny, seed=s)[0].val) for s in range(8)}
    assert len(vals) > 1  # the split depends on the seed
    assert [r for t in a for r in t.test] == [r for t in make_task_stream(tiny, val_fraction=0.5) for r in t.test]


def test_val_split_sizes(tiny):
    recs = scan_category(tiny, 'bottle')['train']
    assert [len(split_validation(recs, f)[1]) for f in (0, 0.01, 0.1, 0.34, 0.99)] == [0, 1, 1, 3, 9]
    assert split_validation(recs[:1], 0.5) == (recs[:1], [])
    with pytest.raises(CladError, match='val_fraction'): split_validation(recs, 1.0)


# --- transforms and datasets --------------------------------------------------------------------------------------

def test_dataset_items(tiny):
    t = make_task_stream(tiny)[0]
    ds = AnomalyDataset(t.test, ImageTransform(48, 40), task_index=3)
    for i in range(len(ds)):
        it = ds[i]
        assert it['image'].shape == (3, 40, 40) and it['image'].dtype == torch.float32
        assert it['mask'].shape == (1, 40, 40) and it['mask'].dtype == torch.float32
        assert set(it['mask'].unique().tolist()) <= {0.0, 1.0}
        assert it['label'] == t.test[i].label and it['task'] == 3 and it['path'] == str(t.test[i].path)
        assert (it['mask'].sum() > 0) == bool(it['label'])
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    assert b['image'].shape == (len(ds), 3, 40, 40) and b['label'].dtype == torch.int64


def test_dataset_without_masks_gives_zero_masks(tiny):
    t = make_task_stream(tiny, ['carpet'])[0]
    assert not t.has_masks
    ds = AnomalyDataset(t.test, ImageTransform(32))
    assert all(ds[i]['mask'].sum() == 0 for i in range(len(ds)))


def test_raw_and_transform_values(tiny):
    recs = scan_category(tiny, 'bottle')['test']
    raw = AnomalyDataset(recs, raw=True)[2]
    assert raw['image'].dtype == torch.uint8 and raw['image'].shape == (3, 32, 32) and raw['mask'].shape == (1, 32, 32)
    ds = AnomalyDataset(recs, ImageTransform(32, normalize=False))
    assert np.array_equal(ds.raw_image(2), raw['image'].permute(1, 2, 0).numpy())
    assert torch.allclose(ds[2]['image'], raw['image'].float() / 255)
    tf = ImageTransform(32)
    assert torch.allclose(tf.denormalize(tf(read_image(recs[2].path))), ds[2]['image'], atol=1e-5)
    with pytest.raises(CladError): AnomalyDataset(recs)
    with pytest.raises(CladError, match='crp_size'): ImageTransform(32, 40)


def test_mask_nearest_and_aligned():
    m = Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8)))  # 16x16 checker
    t = ImageTransform(32, 24).mask(m)
    assert t.shape == (1, 24, 24) and set(t.unique().tolist()) == {0.0, 1.0}
    assert t[0, 0, 0] == 1 and t[0, 0, -1] == 0  # crop is centred: 4-pixel margin each side


def test_grayscale_and_jpg(tmp_path):
    root = write_tiny_mvtec(tmp_path/'g', categories=('grid',), masks=False)
    p = root/'grid'/'train'/'good'/'000.png'
    Image.open(p).convert('L').save(root/'grid'/'train'/'good'/'100.jpg')
    recs = scan_category(root, 'grid')['train']
    assert recs[-1].path.suffix == '.jpg' and read_image(recs[-1].path).mode == 'RGB'


def test_dataset_info(tiny):
    info = dataset_info(tiny)
    assert info['name'] == 'tiny' and Path(info['path']).is_absolute() and len(info['fingerprint']) == 64
    assert info['n_images']['carpet'] == dict(train=10, test_good=2, test_defect=4, masks=0)
    assert dataset_info(tiny)['fingerprint'] == info['fingerprint']
    (tiny/'bottle'/'test'/'good'/'000.png').rename(tiny/'bottle'/'test'/'good'/'099.png')
    assert dataset_info(tiny)['fingerprint'] != info['fingerprint']


def test_aux_readers(tmp_path):
    for cat in ('banded', 'zigzagged'):
        (tmp_path/'dtd'/'images'/cat).mkdir(parents=True)
        for i in range(2): Image.new('RGB', (4, 4)).save(tmp_path/'dtd'/'images'/cat/f'{cat}_{i}.jpg')
    (tmp_path/'dtd'/'labels').mkdir(); (tmp_path/'dtd'/'labels'/'x.txt').write_text('x')
    files = list_anomaly_sources(tmp_path/'dtd')
    assert len(files) == 4 and files == sorted(files)
    (tmp_path/'tin'/'n0001'/'images').mkdir(parents=True)
    Image.new('RGB', (4, 4)).save(tmp_path/'tin'/'n0001'/'images'/'a.JPEG')
    assert len(list_penalty_images(tmp_path/'tin')) == 1


def test_constants():
    assert MVTEC_CLASSES == sorted(MVTEC_CLASSES) and len(MVTEC_CLASSES) == 15
    assert CLAD_ORDER[0] == 'hazelnut' and CLAD_ORDER[-1] == 'screw'


# --- VisA ---------------------------------------------------------------------------------------------------------

from clad.data import VISA_CLASSES, VISA_SPLIT, dataset_layout, read_mask, read_visa_split, write_tiny_visa


@pytest.fixture
def visa(tmp_path):
    return write_tiny_visa(tmp_path/'visa', categories=('candle', 'pcb1', 'pipe_fryum'), n_train=10, n_test_good=3,
                           n_test_defect=2, mask_value=2)


def _split_rows(root):
    lines = (root/VISA_SPLIT).read_text().splitlines()
    return lines[0], lines[1:]


def _write_rows(root, header, rows):
    (root/VISA_SPLIT).write_text('\n'.join([header] + rows) + '\n')


def test_visa_layout_read_from_official_split(visa):
    assert dataset_layout(visa) == 'visa' and list_categories(visa) == ['candle', 'pcb1', 'pipe_fryum']
    s = scan_category(visa, 'pcb1')
    header, rows = _split_rows(visa)
    listed = {(r.split(',')[1], r.split(',')[3]) for r in rows if r.startswith('pcb1,')}
    assert {('train', str(r.path.relative_to(visa))) for r in s['train']} | {('test', str(r.path.relative_to(visa))) for r in s['test']} == listed
    assert [r.path for r in s['test']] == sorted(r.path for r in s['test'])  # sorted, whatever the row order
    assert all(r.label == 0 and r.defect == 'good' and r.mask_path is None for r in s['train'])
    defects = [r for r in s['test'] if r.label]
    assert len(defects) == 2 and all(r.defect == 'anomaly' and r.mask_path.suffix == '.png' for r in defects)


def test_visa_masks_binarised_whatever_their_values(visa):
    t = make_task_stream(visa, ['pcb1'])[0]
    assert t.has_masks
    ds = AnomalyDataset(t.test, ImageTransform(32, normalize=False))
    areas = [float(ds[i]['mask'].sum()) for i in range(len(ds))]
    assert sorted(areas) == [0.0, 0.0, 0.0, 64.0, 64.0]  # an 8x8 defect of value 2 is an 8x8 mask, not an empty one
    raw = AnomalyDataset(t.test, raw=True)
    assert sorted(float(raw[i]['mask'].sum()) for i in range(len(raw))) == [0.0, 0.0, 0.0, 64.0, 64.0]
    p = t.test[[r.label for r in t.test].index(1)].mask_path
    for value in (1, 3, 255):
        Image.fromarray(np.where(np.asarray(Image.open(p)) > 0, value, 0).astype(np.uint8)).save(p)
        assert int((np.asarray(read_mask(p)) == 255).sum()) == 64


def test_visa_val_split_from_training_normals(visa):
    for t in make_task_stream(visa, seed=3):
        s = scan_category(visa, t.name)
        assert sorted(t.train + t.val, key=lambda r: r.path) == s['train'] and len(t.val) == 1
        assert t.test == s['test']  # the official test split, untouched


def test_visa_missing_split_file(visa):
    (visa/VISA_SPLIT).unlink()
    for f in (list_categories, make_task_stream, dataset_info):
        with pytest.raises(CladError, match=r'split_csv/1cls\.csv.*is missing'): f(visa)
    import shutil; shutil.rmtree(visa/'split_csv')  # the class folders alone are still recognised as VisA
    assert dataset_layout(visa) == 'visa'
    with pytest.raises(CladError, match=r'1cls\.csv'): make_task_stream(visa)


def test_visa_class_absent_from_split(visa):
    header, rows = _split_rows(visa)
    _write_rows(visa, header, [r for r in rows if not r.startswith('pcb1,')])
    assert (visa/'pcb1').is_dir() and list_categories(visa) == ['candle', 'pipe_fryum']
    with pytest.raises(CladError, match=r"'pcb1' is not in the VisA split file .*1cls\.csv"): scan_category(visa, 'pcb1')
    with pytest.raises(CladError, match=r"'pcb1' in the VisA split file .*1cls\.csv"): make_task_stream(visa, ['pcb1'])


def test_visa_listed_image_or_mask_missing_names_file_and_row(visa):
    header, rows = _split_rows(visa)
    n = next(i for i, r in enumerate(rows) if r.startswith('pcb1,train')) + 2  # file row number (header is row 1)
    (visa/rows[n - 2].split(',')[3]).unlink()
    with pytest.raises(CladError, match=rf"row {n}: image file .*pcb1/Data/Images/Normal/0000\.JPG.*does not exist"):
        make_task_stream(visa, ['pcb1'])
    assert len(scan_category(visa, 'candle')['train']) == 10  # only the classes asked for are checked
    m = next(i for i, r in enumerate(rows) if r.startswith('candle,test,anomaly')) + 2
    (visa/rows[m - 2].split(',')[4]).unlink()
    with pytest.raises(CladError, match=rf"row {m}: mask file .*Masks/Anomaly/000\.png"): scan_category(visa, 'candle')


@pytest.mark.parametrize('edit,match', [
    (lambda h, rows: (h, [rows[0].replace(',train,', ',val,')] + rows[1:]), r"row 2: split 'val'"),
    (lambda h, rows: (h, [rows[0].replace(',normal,', ',good,')] + rows[1:]), r"row 2: label 'good'"),
    (lambda h, rows: (h, [rows[0].replace(',normal,', ',anomaly,')] + rows[1:]), r'row 2: training images must be normal'),
    (lambda h, rows: (h, rows + [rows[0].replace(',train,', ',test,')]), r'already listed in row 2'),
    (lambda h, rows: (h.replace(',mask', ''), rows), r"column\(s\) \['mask'\] missing"),
    (lambda h, rows: (h, []), r'lists no images'),
    (lambda h, rows: (h, [r for r in rows if not r.startswith('candle,test')]), r"no test rows for class 'candle'"),
])
def test_visa_bad_split_rows(visa, edit, match):
    _write_rows(visa, *edit(*_split_rows(visa)))
    with pytest.raises(CladError, match=match): read_visa_split(visa)


def test_visa_empty_mask_column_gives_image_labels_only(visa):
    header, rows = _split_rows(visa)
    _write_rows(visa, header, [r.rsplit(',', 1)[0] + ',' if r.startswith('candle,test,anomaly') else r for r in rows])
    t = make_task_stream(visa, ['candle', 'pcb1'])
    assert [x.has_masks for x in t] == [False, True]


def test_visa_mvtec_layout_conversion_recognised(tmp_path):
    # VisA converted to the MVTec layout: <class>/train/good, test/{good,bad}, ground_truth/bad/<name>.png
    root = write_tiny_mvtec(tmp_path/'visa_mvtec', categories=VISA_CLASSES, n_train=2, n_test_good=1, n_test_defect=1,
                            size=16, defects=('bad',))
    for m in root.glob('*/ground_truth/bad/*_mask.png'):
        Image.fromarray((np.asarray(Image.open(m)) > 0).astype(np.uint8)).save(m.with_name(m.name.replace('_mask', '')))
        m.unlink()
    info = dataset_info(root)
    assert (info['kind'], info['layout'], info['categories']) == ('visa', 'mvtec', VISA_CLASSES)
    t = make_task_stream(root, ['pcb4'])[0]
    assert t.has_masks and [r.mask_path.name for r in t.test if r.label] == ['000.png']
    i = [r.label for r in t.test].index(1)
    assert AnomalyDataset(t.test, ImageTransform(16))[i]['mask'].sum() == 16  # value-1 mask, 4x4 defect


def test_visa_dataset_info(tmp_path):
    root = write_tiny_visa(tmp_path/'VisA_20220922', VISA_CLASSES, n_train=2, n_test_good=1, n_test_defect=1, size=8)
    info = dataset_info(root)
    assert (info['name'], info['kind'], info['layout']) == ('VisA_20220922', 'visa', 'visa')
    assert info['categories'] == VISA_CLASSES and info['n_images']['pcb3'] == dict(train=2, test_good=1, test_defect=1, masks=1)
    header, rows = _split_rows(root)
    _write_rows(root, header, rows[1:] + rows[:1])  # same rows, another order: same records, but another file
    assert dataset_info(root)['n_images'] == info['n_images'] and dataset_info(root)['fingerprint'] != info['fingerprint']
    assert dataset_info(write_tiny_visa(tmp_path/'part', ('candle',), size=8))['kind'] == 'visa_layout'
