"""The scene + motion activity set (minicaffe data activity_scenes): determinism, shapes,
balanced labels, the evidence each input carries by construction, the shipped nets, and
tools/lrcn_activity_scenes_experiment.py end to end on a tiny configuration."""
import json
import os
import sys

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe.lrcn.datasets import activity_scenes as asc
from minicaffe.lrcn.datasets import flow as flowlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACT = os.path.join(ROOT, 'prototxt', 'lrcn', 'activity_scenes')
T, N, S, K = 16, 8, 24, 8


def tiny_prepare(out, seed=3, train_per_class=4, test_per_class=2, frames=24):
    return asc.prepare(out, size=S, frames=frames, clip_length=T, clip_stride=8, clips_per_batch=N,
                       train_per_class=train_per_class, test_per_class=test_per_class, seed=seed,
                       batches_per_file=4, log=lambda m: None)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A folder holding data/activity_scenes (tiny) and prototxt/ (a link): the cwd the
    shipped nets and solvers expect."""
    d = tmp_path_factory.mktemp('scenes')
    tiny_prepare(str(d / 'data' / 'activity_scenes'))
    os.symlink(os.path.join(ROOT, 'prototxt'), str(d / 'prototxt'))
    return d


# ------------------------------------------------------------------ data
def test_generation_is_deterministic_and_seeded(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        tiny_prepare(str(tmp_path / name), seed, train_per_class=2, test_per_class=1)
    for name in ('videos_train.h5', 'videos_test.h5', 'rgb_train_000.h5', 'flow_test_000.h5'):
        with h5py.File(tmp_path / 'a' / name, 'r') as fa, h5py.File(tmp_path / 'b' / name, 'r') as fb, \
                h5py.File(tmp_path / 'c' / name, 'r') as fc:
            assert sorted(fa) == sorted(fb)
            for k in fa:
                assert np.array_equal(fa[k][()], fb[k][()]), (name, k)
            key = 'rgb' if 'rgb' in fa else 'data'
            assert not np.array_equal(fa[key][()], fc[key][()])
    meta = json.load(open(tmp_path / 'a' / 'meta.json'))
    assert meta['classes'] == asc.CLASSES and meta['scenes'] == asc.SCENES
    assert meta['splits']['train']['videos'] == 16 and meta['splits']['test']['videos'] == 8


def test_shapes_and_clip_layout(workdir):
    d = workdir / 'data' / 'activity_scenes'
    with h5py.File(d / 'videos_train.h5', 'r') as f:
        assert f['rgb'].shape == (32, 24, 3, S, S) and f['rgb'].dtype == np.uint8
        assert f['flow'].shape == f['rgb'].shape and f['flow'].dtype == np.uint8
        labels, scenes = f['label'][()], f['scene'][()]
        assert json.loads(f.attrs['classes']) == asc.CLASSES
    assert len(labels) == len(scenes) == 32
    names = open(d / 'rgb_train.txt').read().split()
    rows = 0
    for n in names:
        with h5py.File(n, 'r') as f:
            assert f['data'].shape[1:] == (3, S, S)
            assert json.loads(f.attrs['classes']) == asc.CLASSES
            cm = f['clip_markers'][()].reshape(-1, T, N)
            assert (cm[:, 0] == 0).all() and (cm[:, 1:] == 1).all()
            lab = f['label'][()].reshape(-1, T, N)
            assert (lab == lab[:, :1]).all()           # the clip's class on every frame
            vid = f['video'][()].reshape(-1, T, N)[:, 0]
            assert np.array_equal(lab[:, 0][vid >= 0], labels[vid[vid >= 0]])
            rows += len(f['data'])
    assert rows == 32 * 2 * T                          # 2 clips of 16 frames per 24-frame video


def test_labels_are_balanced_and_scenes_follow_the_classes(workdir):
    for split, per_class in (('train', 4), ('test', 2)):
        with h5py.File(workdir / 'data' / 'activity_scenes' / ('videos_%s.h5' % split), 'r') as f:
            labels, scenes = f['label'][()], f['scene'][()]
        assert np.array_equal(np.bincount(labels, minlength=K), [per_class] * K)
        for lab, sc in zip(labels, scenes):
            assert sc in asc.CLASS_SCENES[lab]
    # on many videos the primary scene is drawn with probability PRIMARY_P
    rs = np.random.default_rng(0)
    p = asc.sample_params(np.repeat(np.arange(K), 500), rs, S)
    primary = np.array([asc.CLASS_SCENES[c][0] for c in p['label']])
    assert abs(np.mean(p['scene'] == primary) - asc.PRIMARY_P) < 0.03
    # every scene is the primary scene of two classes and the secondary scene of two others
    assert sorted(np.bincount([a for a, _ in asc.CLASS_SCENES])) == [2] * len(asc.SCENES)
    assert sorted(np.bincount([b for _, b in asc.CLASS_SCENES])) == [2] * len(asc.SCENES)


def test_reversed_classes_are_time_reversals():
    """slide_left = slide_right, grow = shrink, appear = disappear played backwards: the
    same frames, so no single frame can tell these pairs apart."""
    rs = np.random.default_rng(1)
    F = 20
    for fwd, bwd in ((0, 1), (2, 3), (4, 5)):
        p = asc.sample_params([fwd], rs, S)
        x, y, r, a = asc.trajectories(p, F)
        q = dict(p, label=np.array([bwd]))
        q['x0'] = x[:, -1].copy()                      # the backward video starts where this one ends
        x2, y2, r2, a2 = asc.trajectories(q, F)
        for u, w in ((x, x2), (y, y2), (r, r2), (a, a2)):
            assert np.allclose(u[:, ::-1], w), (fwd, bwd)
        bg, obj = asc.scene_and_object_colours(p, np.random.default_rng(2), S, 8.0)
        v1 = asc.render(p, x, y, r, a, bg, obj, S)
        v2 = asc.render(q, x2, y2, r2, a2, bg, obj, S)
        assert np.array_equal(v1[0, ::-1], v2[0])


def test_reversals_need_more_than_one_frame_of_motion():
    """bounce moves like a slide and pulse changes size like grow/shrink at the same speeds,
    but they reverse within every clip of 16 frames."""
    rs = np.random.default_rng(3)
    p = asc.sample_params([6] * 50 + [7] * 50, rs, S)
    x, _, r, _ = asc.trajectories(p, T)
    dx, dr = np.diff(x, axis=1)[:50], np.diff(r, axis=1)[50:]
    assert np.allclose(np.abs(dx), p['speed'][:50, None])            # |speed| of a slide
    assert np.allclose(np.abs(dr), p['rate'][50:, None])             # |rate| of grow/shrink
    assert ((dx > 0).any(1) & (dx < 0).any(1)).all()
    assert ((dr > 0).any(1) & (dr < 0).any(1)).all()


def _frame_features(path, step=4):
    with h5py.File(path, 'r') as f:
        rgb = f['rgb'][:, ::step].astype(np.float32)
        flow = f['flow'][:, ::step].astype(np.float32)
        labels = f['label'][()]
    return rgb, flow, labels


def _nearest_mean(train_x, train_y, test_x, test_y, classes=K):
    """Gaussian naive Bayes on (frames, features): frame accuracy."""
    mu = np.stack([train_x[train_y == c].mean(0) for c in range(classes)])
    sd = np.stack([train_x[train_y == c].std(0) + 1.0 for c in range(classes)])
    ll = -0.5 * (((test_x[:, None] - mu) / sd) ** 2).sum(-1) - np.log(sd).sum(-1)
    return float(np.mean(ll.argmax(1) == test_y))


@pytest.fixture(scope='module')
def evidence_set(tmp_path_factory):
    d = tmp_path_factory.mktemp('evidence')
    asc.prepare(str(d), train_per_class=40, test_per_class=20, seed=11, log=lambda m: None)
    return _frame_features(d / 'videos_train.h5') + _frame_features(d / 'videos_test.h5')


def test_a_single_rgb_frame_sees_the_scene(evidence_set):
    """An appearance-only classifier (the median colour of a frame: its scene) stays well above
    chance (12.5%) and near the 37.5% that the scene alone allows (every scene is the primary
    scene of two classes, drawn with p = 0.75)."""
    rgb, _, lab, rgb_t, _, lab_t = evidence_set

    def median_colour(v):
        return np.median(v.reshape(v.shape[:3] + (-1,)), -1).reshape(-1, 3)
    acc = _nearest_mean(median_colour(rgb), np.repeat(lab, rgb.shape[1]),
                        median_colour(rgb_t), np.repeat(lab_t, rgb_t.shape[1]))
    assert 0.28 < acc < 0.45, acc


def test_a_single_flow_frame_sees_the_motion_not_the_scene(evidence_set):
    """The mean x flow over the moving pixels tells slide_right from slide_left; the same
    videos played in other scenes (background colour and texture) change the flow far less
    than the same scenes with other motions."""
    _, _, _, _, fl_t, lab_t = evidence_set
    u = (fl_t[:, :, 0] - 128.0) / flowlib.FLOW_SCALE
    mag = fl_t[:, :, 2] / flowlib.FLOW_SCALE
    moving = mag > 0.3
    mean_u = (u * moving).sum((-1, -2)) / np.maximum(moving.sum((-1, -2)), 1)     # (V, F)
    right, left = mean_u[lab_t == 0].ravel(), mean_u[lab_t == 1].ravel()
    assert np.mean(right > 0) > 0.9 and np.mean(left < 0) > 0.9

    rs = np.random.default_rng(5)
    p = asc.sample_params(np.arange(K), rs, S)

    def flow_of(q):
        x, y, r, a = asc.trajectories(q, 9)
        bg, obj = asc.scene_and_object_colours(q, np.random.default_rng(6), S, 8.0)
        v = asc.render(q, x, y, r, a, bg, obj, S)
        return np.stack(flowlib.image_to_flow(
            flowlib.frames_to_flow_images(v, boundary='wrap', **asc.FLOW_PARAMS)))
    f0 = flow_of(p)
    for shift in (1, 2, 3):
        other_scene = flow_of(dict(p, scene=(p['scene'] + shift) % len(asc.SCENES)))
        other_motion = flow_of(dict(p, label=(p['label'] + shift) % K))
        # the scene reaches the flow only through the object's contrast (flow magnitudes)
        assert np.abs(f0 - other_scene).mean() < 0.4 * np.abs(f0 - other_motion).mean()


def test_a_static_scene_has_almost_no_flow():
    """FLOW_PARAMS keep the pixel noise on the textured scenes from showing as flow (what the
    pyramid and the weaker regularization of moving-MNIST's flow would let through)."""
    rs = np.random.default_rng(8)
    p = asc.sample_params(np.arange(K), rs, S)
    x, y, r, _ = asc.trajectories(p, 9)
    bg, obj = asc.scene_and_object_colours(p, rs, S, 8.0)
    v = asc.render(p, x, y, r, np.zeros_like(r), bg, obj, S, noise=2.0, rs=rs)   # no object
    ours = np.hypot(*flowlib.image_to_flow(flowlib.frames_to_flow_images(v, boundary='wrap',
                                                                          **asc.FLOW_PARAMS)))
    default = np.hypot(*flowlib.image_to_flow(flowlib.frames_to_flow_images(v, boundary='wrap')))
    assert ours.mean() < 0.05 and default.mean() > 2 * ours.mean(), (ours.mean(), default.mean())


def test_objects_contrast_with_their_scene_in_gray():
    """Flow is computed on gray frames: every object differs from its scene by at least
    MIN_GRAY_CONTRAST gray levels (inverted colour otherwise)."""
    rs = np.random.default_rng(4)
    p = asc.sample_params(np.repeat(np.arange(K), 50), rs, S)
    bg, obj = asc.scene_and_object_colours(p, rs, S, 0.0)
    gap = np.abs(obj.mean(1) - bg.mean((1, 2, 3)))
    assert (gap >= asc.MIN_GRAY_CONTRAST).all()


# ------------------------------------------------------------------ command line
def test_data_command(tmp_path, capsys):
    out = tmp_path / 'sc'
    code = cli.main(['data', 'activity_scenes', '--out', str(out), '--frames', '16', '--size', '16',
                     '--train-per-class', '1', '--test-per-class', '1', '--clips-per-batch', '4'])
    assert code == 0
    meta = json.load(open(out / 'meta.json'))
    assert meta['splits']['train']['videos'] == 8 and meta['size'] == 16
    with h5py.File(out / 'rgb_train_000.h5', 'r') as f:
        assert len(f['data']) == 2 * 4 * 16           # 8 clips in 2 batches of 4
    args = cli.build_parser().parse_args(['data', 'activity_scenes'])
    assert (args.out, args.noise, args.size) == ('data/activity_scenes', asc.DEFAULTS['noise'], 24)


@pytest.mark.parametrize('argv, message', [
    (['--frames', '8'], '--clip-length 16 is longer than the videos (--frames 8)'),
    (['--size', '8'], '--size 8 is too small'),
    (['--train-per-class', '0'], '--train-per-class must be at least 1'),
])
def test_data_command_rejects_bad_options(tmp_path, capsys, argv, message):
    code = cli.main(['data', 'activity_scenes', '--out', str(tmp_path / 'x')] + argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('minicaffe: error: activity_scenes: ') and message in err
    assert not (tmp_path / 'x').exists()


# ------------------------------------------------------------------ nets
@pytest.mark.parametrize('name', ['train_test_singleFrame_RGB', 'train_test_singleFrame_flow',
                                  'train_test_lstm_RGB', 'train_test_lstm_flow'])
def test_shipped_nets_build(workdir, monkeypatch, name):
    monkeypatch.chdir(workdir)
    net = caffe.Net(os.path.join(ACT, name + '.prototxt'), caffe.TRAIN)
    assert net.blobs['data'].shape == (T * N, 3, S, S)
    if 'lstm' in name:
        assert net.blobs['fc8-final'].shape == (T, N, K)
    else:
        assert net.blobs['fc8-ucf'].shape == (T * N, K)
    out = net.forward()
    assert abs(float(out['loss']) - np.log(K)) < 0.5
    src = [l for l in open(os.path.join(ACT, name + '.prototxt')) if 'source:' in l]
    assert src and all('data/activity_scenes/' in l for l in src)


def test_deploy_nets_match_the_train_nets(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    for deploy, train in (('deploy_singleFrame', 'train_test_singleFrame_RGB'),
                          ('deploy_lstm', 'train_test_lstm_flow')):
        dn = caffe.Net(os.path.join(ACT, deploy + '.prototxt'), caffe.TEST)
        assert dn.blobs['probs'].shape[-1] == K and dn.blobs['data'].shape[1:] == (3, S, S)
        tr = caffe.Net(os.path.join(ACT, train + '.prototxt'), caffe.TEST, stages=['test-on-test'])
        assert sorted(dn.params) == sorted(tr.params)
        for k in tr.params:
            assert [b.shape for b in dn.params[k]] == [b.shape for b in tr.params[k]]


def test_solvers_point_at_the_nets():
    from minicaffe.solvers.solver import read_solver_param
    for kind in ('RGB', 'flow'):
        for arch in ('singleFrame', 'lstm'):
            p = read_solver_param(os.path.join(ACT, '%s_solver_%s.prototxt' % (arch, kind)))
            assert p.net == 'prototxt/lrcn/activity_scenes/train_test_%s_%s.prototxt' % (arch, kind)
            assert os.path.exists(os.path.join(ROOT, p.net))
            assert p.snapshot_prefix.startswith('runs/lrcn_activity_scenes/')


# ------------------------------------------------------------------ the experiment script
def test_experiment_script_end_to_end(workdir, monkeypatch, tmp_path):
    """The whole table (4 nets x 2 seeds, evaluation, fusion) at a few iterations."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import lrcn_activity_scenes_experiment as exp
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(workdir)
    docs = tmp_path / 'docs' / 'lrcn_results.md'
    docs.parent.mkdir()
    docs.write_text('# LRCN results\n\n## Activity recognition\n\nkept\n')
    res_path, table = tmp_path / 'res.json', tmp_path / 'table.md'
    code = exp.main(['--seeds', '5', '6', '--iters', '3', '--lstm-iters', '3', '--jobs', '1',
                     '--runs', str(tmp_path / 'runs'), '--results', str(res_path), '--table', str(table),
                     '--docs', str(docs)])
    assert code == 0
    res = json.load(open(res_path))
    assert res['seeds'] == [5, 6] and sorted(res['per_seed']) == ['5', '6']
    assert len(res['summary']) == 8                        # the paper's 8 numbers
    for key, row in res['summary'].items():
        v = row['video']
        assert len(v['values']) == 2 and v['min'] <= v['mean'] <= v['max']
        assert np.isclose(v['mean'], np.mean(v['values'])) and np.isclose(v['std'], np.std(v['values']))
    for seed in ('5', '6'):
        assert 0 <= res['per_seed'][seed]['order_flip_lstm_RGB'] <= 1
        tr = res['per_seed'][seed]['trained']
        assert tr['RGB']['lstm']['iters'] == 3 and tr['flow']['singleFrame']['wall_s'] > 0
        assert os.path.exists(tr['RGB']['lstm']['weights']) and ('seed%s' % seed) in tr['RGB']['lstm']['weights']
    # seeds change the training: different weights
    w5 = caffe.Net(os.path.join(ACT, 'deploy_singleFrame.prototxt'), caffe.TEST,
                   weights=res['per_seed']['5']['trained']['RGB']['singleFrame']['weights'])
    w6 = caffe.Net(os.path.join(ACT, 'deploy_singleFrame.prototxt'), caffe.TEST,
                   weights=res['per_seed']['6']['trained']['RGB']['singleFrame']['weights'])
    assert not np.array_equal(w5.params['conv1'][0].data, w6.params['conv1'][0].data)
    rows = [l for l in open(table) if l.startswith('| Single frame') or l.startswith('| LRCN')]
    assert len(rows) == 8
    text = docs.read_text()
    assert '## Activity recognition\n\nkept\n' in text and exp.SECTION in text
    assert text.count('| LRCN | fusion') == 2
    assert text.count(': holds.') + text.count(': does **not** hold.') == 3      # the 3 findings
    assert (docs.parent / 'lrcn_activity_scenes_examples.png').exists()
    # LRCN nets alone, from the single-frame nets of that run
    again = tmp_path / 'again.json'
    assert exp.main(['--seeds', '6', '--lstm-iters', '2', '--jobs', '1', '--runs', str(tmp_path / 'runs2'),
                     '--reuse-single-frame', str(res_path), '--results', str(again),
                     '--table', str(tmp_path / 't2.md'), '--no-docs']) == 0
    tr2 = json.load(open(again))['per_seed']['6']['trained']
    assert tr2['flow']['singleFrame'] == res['per_seed']['6']['trained']['flow']['singleFrame']
    assert tr2['flow']['lstm']['iters'] == 2 and 'runs2' in tr2['flow']['lstm']['weights']
    # --docs-only rewrites the section from the results file alone, with other runs' lines
    docs.write_text('# LRCN results\n')
    assert exp.main(['--docs-only', '--results', str(res_path), '--table', str(table),
                     '--docs', str(docs), '--extra-results', 'Longer', str(res_path)]) == 0
    text = docs.read_text()
    assert exp.SECTION in text and 'played backwards' in text
    assert 'Longer (`%s`, seeds 5, 6): video accuracy' % res_path in text


def test_findings_are_checked_on_the_means():
    import importlib
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        exp = importlib.import_module('lrcn_activity_scenes_experiment')
    finally:
        sys.path.pop(0)
    mean = {'singleFrame RGB': .4, 'singleFrame flow': .6, 'singleFrame fusion 0.50': .7,
            'singleFrame fusion 0.67': .7, 'lstm RGB': .45, 'lstm flow': .8, 'lstm fusion 0.50': .9,
            'lstm fusion 0.67': .85}
    summary = {k: {'video': {'mean': v}} for k, v in mean.items()}
    assert [h for _, h in exp.findings(summary)] == [True, True, True]
    mean['lstm RGB'] = .95                                    # RGB gain larger, fusion not best
    summary = {k: {'video': {'mean': v}} for k, v in mean.items()}
    assert [h for _, h in exp.findings(summary)] == [True, False, False]
