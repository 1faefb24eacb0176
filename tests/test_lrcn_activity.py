"""LRCN activity recognition: moving-MNIST videos and their optical flow, the clip files in
LRCN's time-major layout, the shipped single-frame/LRCN nets (RGB and flow), a short
training, and clip/video classification (minicaffe classify-video)."""
import gzip
import json
import os
import pickle

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe.lrcn.datasets import flow as flowlib
from minicaffe.lrcn.datasets import moving_mnist as mm
from minicaffe.lrcn.video_classify import VideoClassifier, clip_starts, fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACT = os.path.join(ROOT, 'prototxt', 'lrcn', 'activity')
T, N, S, K = 16, 8, 32, 6


def fake_digits(n, seed):
    """Stroke-like 28x28 'digits' in [0, 1) (no MNIST needed in CI)."""
    rs = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    out = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        for _ in range(3):
            cx, cy = rs.uniform(8, 20, 2)
            sx, sy = rs.uniform(1.5, 5, 2)
            out[i] += np.exp(-((xx - cx) ** 2 / sx ** 2 + (yy - cy) ** 2 / sy ** 2))
    return np.clip(out, 0, 0.99).reshape(n, 784), np.zeros(n)


def tiny_prepare(out, seed=3, train_per_class=8, test_per_class=4):
    return mm.prepare(out, size=S, frames=T, clip_length=T, clip_stride=8, clips_per_batch=N,
                      train_per_class=train_per_class, test_per_class=test_per_class, seed=seed,
                      batches_per_file=4,
                      digits=(fake_digits(60, 1), fake_digits(30, 2)), log=lambda m: None)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A folder holding data/moving_mnist (tiny), the cwd the shipped nets expect."""
    d = tmp_path_factory.mktemp('act')
    tiny_prepare(str(d / 'data' / 'moving_mnist'))
    return d


# ------------------------------------------------------------------ data
def test_generation_is_deterministic_and_seeded(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        tiny_prepare(str(tmp_path / name), seed, train_per_class=2, test_per_class=2)
    for name in ('videos_train.h5', 'rgb_train_000.h5', 'flow_test_000.h5'):
        with h5py.File(tmp_path / 'a' / name, 'r') as fa, h5py.File(tmp_path / 'b' / name, 'r') as fb, \
                h5py.File(tmp_path / 'c' / name, 'r') as fc:
            for k in fa:
                assert np.array_equal(fa[k][()], fb[k][()]), (name, k)
            key = 'rgb' if 'rgb' in fa else 'data'
            assert not np.array_equal(fa[key][()], fc[key][()])
    meta = json.load(open(tmp_path / 'a' / 'meta.json'))
    assert meta['classes'] == mm.CLASSES and meta['splits']['train']['videos'] == 12


def test_one_frame_cannot_tell_the_class():
    """Reversed in time, a slide_right clip is exactly a slide_left clip (spin_cw: spin_ccw)
    of the same digit: the same set of frames carries both labels."""
    rs = np.random.default_rng(0)
    dig = fake_digits(1, 5)[0].reshape(1, 28, 28)
    for fwd, bwd in ((0, 1), (3, 4)):
        p = mm.sample_params([fwd], rs, S)
        x, y, a = mm.trajectories(p, T)
        q = dict(p, label=np.array([bwd]))
        q['x0'] = x[:, -1].copy()
        q['angle0'] = a[:, -1].copy()
        x2, y2, a2 = mm.trajectories(q, T)
        v1 = mm.render(dig, x, y, a, p['scale'], p['color'], S)
        v2 = mm.render(dig, x2, y2, a2, q['scale'], q['color'], S)
        assert np.abs(v1[0, ::-1].astype(int) - v2[0].astype(int)).max() <= 1
    # and every class draws position and angle uniformly: per-frame statistics agree
    lab = np.repeat(np.arange(K), 4000)
    p = mm.sample_params(lab, rs, S)
    x, _, a = mm.trajectories(p, T)
    for c in range(K):
        xs = np.mod(x[lab == c, 5], S)
        an = np.mod(a[lab == c, 5], 2 * np.pi)
        assert abs(xs.mean() - S / 2) < 0.5 and abs(an.mean() - np.pi) < 0.1
        assert abs(xs.std() - S / np.sqrt(12)) < 0.5


def test_motion_classes_differ_over_time():
    rs = np.random.default_rng(1)
    p = mm.sample_params(np.arange(K), rs, S)
    x, _, a = mm.trajectories(p, T)
    dx, da = np.diff(x, axis=1), np.diff(a, axis=1)
    assert (dx[0] > 0).all() and (dx[1] < 0).all()
    assert (dx[2] > 0).any() and (dx[2] < 0).any()          # bounce reverses
    assert (da[3] > 0).all() and (da[4] < 0).all()
    assert (da[5] > 0).any() and (da[5] < 0).any()          # swing reverses
    assert np.allclose(da[:3], 0) and np.allclose(dx[3:], 0)


def _pattern(shift_x=0.0, shift_y=0.0, size=32):
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = np.zeros((size, size), np.float32)
    for cx, cy, s in ((12, 14, 3.0), (20, 18, 2.0), (16, 9, 2.5)):
        out += np.exp(-((xx - cx - shift_x) ** 2 + (yy - cy - shift_y) ** 2) / (2 * s * s))
    return out


@pytest.mark.parametrize('dx,dy', [(1, 0), (-1, 0), (0, 1), (0, -1.5), (2, 1)])
def test_flow_sign_on_a_known_translation(dx, dy):
    a, b = _pattern(), _pattern(dx, dy)
    u, v = flowlib.lucas_kanade(a, b)
    m = a > 0.3
    assert abs(u[m].mean() - dx) < 0.15 and abs(v[m].mean() - dy) < 0.15
    img = flowlib.flow_to_image(u, v)
    assert img.dtype == np.uint8 and img.shape == (3, 32, 32)
    # LRCN's flow image: x and y around 128, magnitude in the third channel
    ex = np.median(img[0][m].astype(int)) - 128
    ey = np.median(img[1][m].astype(int)) - 128
    for e, d in ((ex, dx), (ey, dy)):
        assert (abs(e) <= 3) if d == 0 else (np.sign(e) == np.sign(d) and abs(e) > 16)
    assert np.median(img[2][m]) > 16
    back_u, back_v = flowlib.image_to_flow(img)
    assert abs(back_u[m].mean() - u[m].mean()) < 0.05


def test_flow_wraps_on_the_torus():
    a = _pattern()
    b = np.roll(a, 2, axis=1)       # whole image moves right by 2, wrapping
    u, v = flowlib.lucas_kanade(a, b, boundary='wrap')
    m = a > 0.3
    assert abs(u[m].mean() - 2) < 0.15 and abs(v[m].mean()) < 0.15
    with pytest.raises(ValueError):
        flowlib.lucas_kanade(a, b, boundary='mirror')


def test_rotation_flow_sense():
    """A clockwise (on screen) spin: to the right of the centre the flow points down."""
    rs = np.random.default_rng(2)
    dig = fake_digits(1, 3)[0].reshape(1, 28, 28)
    p = mm.sample_params([3], rs, S)
    p['x0'][:] = p['y0'][:] = 16
    p['omega'][:] = np.deg2rad(10)
    x, y, a = mm.trajectories(p, 2)
    v = mm.render(dig, x, y, a, np.array([0.9]), np.ones((1, 3)), S)
    fl = flowlib.frames_to_flow_images(v, boundary='wrap')[0, 0]
    fu, fv = flowlib.image_to_flow(fl)
    m = fl[2] > 8
    yy, xx = np.mgrid[:S, :S] + 0.5
    curl = ((xx - 16) * fv - (yy - 16) * fu)[m].mean()    # > 0: clockwise with y down
    assert curl > 0


def test_clip_files_follow_lrcn_layout(workdir):
    d = workdir / 'data' / 'moving_mnist'
    names = open(d / 'rgb_train.txt').read().split()
    assert [n[-34:] for n in names] == ['data/moving_mnist/rgb_train_000.h5',
                                        'data/moving_mnist/rgb_train_001.h5']
    with h5py.File(d / 'videos_train.h5', 'r') as f:
        videos, vlabels = f['rgb'][()], f['label'][()]
        flows = f['flow'][()]
    assert videos.shape == (48, T, 3, S, S) and flows.shape == videos.shape
    assert sorted(np.bincount(vlabels)) == [8] * K
    seen = 0
    for kind, src in (('rgb', videos), ('flow', flows)):
        for name in open(d / ('%s_train.txt' % kind)).read().split():
            with h5py.File(workdir / name, 'r') as f:
                data, lab, cm, vid = f['data'][()], f['label'][()], f['clip_markers'][()], f['video'][()]
                assert data.dtype == np.uint8 and f.attrs['clip_length'] == T
            nb = len(data) // (T * N)
            assert len(data) == nb * T * N
            for b in range(nb):
                rows = slice(b * T * N, (b + 1) * T * N)
                dd = data[rows].reshape(T, N, 3, S, S)
                ll, cc, vv = lab[rows].reshape(T, N), cm[rows].reshape(T, N), vid[rows].reshape(T, N)
                assert (cc[0] == 0).all() and (cc[1:] == 1).all()
                assert (ll == ll[0]).all() and (vv == vv[0]).all()
                for n in range(N):
                    assert vlabels[vv[0, n]] == ll[0, n]
                    assert np.array_equal(dd[:, n], src[vv[0, n]])     # time-major rows
                seen += N
    assert seen == 2 * 48


def test_data_command_with_a_source_pickle(tmp_path):
    src = tmp_path / 'mnist.pkl.gz'
    tr, va, te = fake_digits(20, 1), fake_digits(5, 2), fake_digits(10, 3)
    with gzip.open(src, 'wb') as f:
        pickle.dump((tr, va, te), f)
    out = tmp_path / 'mm'
    code = cli.main(['data', 'moving_mnist', '--out', str(out), '--source', str(src),
                     '--frames', '16', '--train-per-class', '1', '--test-per-class', '1',
                     '--clips-per-batch', '4'])
    assert code == 0
    meta = json.load(open(out / 'meta.json'))
    assert meta['splits']['train']['videos'] == 6
    # 6 clips padded to 2 batches of 4: the padding clips carry video -1
    with h5py.File(out / 'rgb_train_000.h5', 'r') as f:
        assert len(f['data']) == 2 * 4 * 16
        assert (f['video'][()] == -1).sum() == 2 * 16


# ------------------------------------------------------------------ nets
NETS = ['train_test_singleFrame_RGB', 'train_test_singleFrame_flow',
        'train_test_lstm_RGB', 'train_test_lstm_flow']


@pytest.mark.parametrize('name', NETS)
def test_shipped_nets_build(workdir, monkeypatch, name):
    monkeypatch.chdir(workdir)
    path = os.path.join(ACT, name + '.prototxt')
    for phase, stages in ((caffe.TRAIN, None), (caffe.TEST, ['test-on-test'])):
        net = caffe.Net(path, phase, stages=stages)
        assert net.blobs['data'].shape == (T * N, 3, S, S)
        assert net.blobs['fc6'].shape == (T * N, 128)
        if 'lstm' in name:
            assert net.blobs['fc6-reshape'].shape == (T, N, 128)
            assert net.blobs['lstm1'].shape == (T, N, 128)
            assert net.blobs['fc8-final'].shape == (T, N, K)
            assert net.blobs['reshape-cm'].shape == (T, N)
            assert [l.type for l in net.layers if l.type == 'LSTM'] == ['LSTM']
        else:
            assert net.blobs['fc8-ucf'].shape == (T * N, K)
        out = net.forward()
        assert 0 <= float(out['accuracy']) <= 1 and np.isfinite(out['loss'])
        if 'lstm' in name:
            cm = net.blobs['clip_markers'].data.reshape(T, N)
            assert (cm[0] == 0).all() and (cm[1:] == 1).all()
        # the data are scaled in the net: [-1, 1)
        assert net.blobs['data'].data.min() >= -1 and net.blobs['data'].data.max() < 1


def test_deploy_nets_build(workdir, monkeypatch):
    sf = caffe.Net(os.path.join(ACT, 'deploy_singleFrame.prototxt'), caffe.TEST)
    assert sf.blobs['probs'].shape == (T * N, K)
    ls = caffe.Net(os.path.join(ACT, 'deploy_lstm.prototxt'), caffe.TEST)
    assert ls.blobs['probs'].shape == (T, N, K)
    ls.blobs['data'].reshape((T * 3, 3, S, S))
    ls.blobs['clip_markers'].reshape((T * 3,))
    ls.reshape()
    assert ls.blobs['probs'].shape == (T, 3, K)
    # the deploy nets have the train nets' layers (names and parameter shapes): trained
    # weights load by name
    monkeypatch.chdir(workdir)
    for deploy, train in ((sf, 'train_test_singleFrame_RGB'), (ls, 'train_test_lstm_flow')):
        tr = caffe.Net(os.path.join(ACT, train + '.prototxt'), caffe.TEST, stages=['test-on-test'])
        assert sorted(deploy.params) == sorted(tr.params)
        for k in tr.params:
            assert [b.shape for b in deploy.params[k]] == [b.shape for b in tr.params[k]]


def test_solvers_point_at_the_nets():
    from minicaffe.solvers.solver import read_solver_param
    for kind in ('RGB', 'flow'):
        for arch in ('singleFrame', 'lstm'):
            p = read_solver_param(os.path.join(ACT, '%s_solver_%s.prototxt' % (arch, kind)))
            assert p.net == 'prototxt/lrcn/activity/train_test_%s_%s.prototxt' % (arch, kind)
            assert os.path.exists(os.path.join(ROOT, p.net))
            assert list(p.test_state[0].stage) == ['test-on-test']
            assert p.max_iter > 0 and p.snapshot_prefix.startswith('runs/lrcn_activity/')


def test_training_lowers_the_loss(workdir, monkeypatch, tmp_path):
    """The shipped LRCN flow net and solver, a dozen iterations on one batch (8 clips)."""
    from minicaffe.protoio import pb, read_text
    from minicaffe.solvers.solver import Solver, read_solver_param
    monkeypatch.chdir(workdir)
    with h5py.File('data/moving_mnist/flow_train_000.h5', 'r') as f, \
            h5py.File(tmp_path / 'one.h5', 'w') as g:
        for k in ('data', 'label', 'clip_markers'):
            g[k] = f[k][:T * N]
    (tmp_path / 'one.txt').write_text(str(tmp_path / 'one.h5') + '\n')
    p = read_solver_param(os.path.join(ACT, 'lstm_solver_flow.prototxt'))
    netp = read_text(os.path.join(ROOT, p.net), pb.NetParameter)
    for lp in netp.layer:
        if lp.type == 'HDF5Data':
            lp.hdf5_data_param.source = str(tmp_path / 'one.txt')
    p.ClearField('net')
    p.net_param.CopyFrom(netp)
    p.max_iter, p.snapshot, p.display, p.average_loss, p.base_lr = 12, 0, 0, 1, 0.01
    s = Solver(p, logger=lambda m: None)
    losses = []
    for _ in range(12):
        s.step(1)
        losses.append(float(s.smoothed_loss))
    assert abs(losses[0] - np.log(K)) < 0.1
    assert np.mean(losses[-3:]) < losses[0] - 0.2, losses


# ------------------------------------------------------------------ classify-video
@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp('w')
    caffe.set_random_seed(5)
    out = {}
    for name in ('deploy_singleFrame', 'deploy_lstm'):
        net = caffe.Net(os.path.join(ACT, name + '.prototxt'), caffe.TEST)
        for layer_params in net.params.values():
            for b in layer_params:
                b.data[...] = np.random.default_rng(7).standard_normal(b.shape) * 0.2
        out[name] = str(d / (name + '.caffemodel'))
        net.save(out[name])
    return out


@pytest.mark.parametrize('name', ['deploy_singleFrame', 'deploy_lstm'])
def test_classify_video_averages_clips(random_weights, name):
    clf = VideoClassifier(os.path.join(ACT, name + '.prototxt'), random_weights[name], batch_clips=2)
    assert clf.clip_length == T and clf.is_lstm == (name == 'deploy_lstm')
    rs = np.random.default_rng(0)
    video = rs.integers(0, 256, (33, 3, S, S)).astype(np.uint8)
    r = clf.classify(video)
    assert r['clip_starts'] == [0, 8, 16] == clip_starts(33, 16, 8)
    fs = np.stack([clf.frame_scores(video[None, s:s + T].astype(np.float32))[0] for s in r['clip_starts']])
    assert fs.shape == (3, T, K)
    np.testing.assert_allclose(fs.sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(r['clip_probs'], fs.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r['video_probs'], fs.mean((0, 1)), rtol=1e-5, atol=1e-6)
    # batching clips (3 clips, 2 per pass) gives the scores of each clip alone: the clip
    # markers reset the LSTM at every clip
    cp, vp = clf.classify_many(video[None])
    np.testing.assert_allclose(cp[0], r['clip_probs'], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(vp[0], r['video_probs'], rtol=1e-4, atol=1e-6)
    # channels-last frames are accepted
    r2 = clf.classify(video.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(r2['video_probs'], r['video_probs'], rtol=1e-5)
    if clf.is_lstm:   # the LSTM sees order: reversing the clip changes its scores
        rev = clf.frame_scores(video[None, T - 1::-1].astype(np.float32))[0].mean(0)
        assert np.abs(rev - r['clip_probs'][0]).max() > 1e-4


def test_fusion_is_a_weighted_average():
    a, b = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    np.testing.assert_allclose(fuse(a, b, 0.25), [[0.3, 0.7]])
    np.testing.assert_allclose(fuse(a, b, 0.0), a)


def test_classify_video_command(workdir, random_weights, capsys, tmp_path):
    videos = str(workdir / 'data' / 'moving_mnist' / 'videos_test.h5')
    js = str(tmp_path / 'out.json')
    code = cli.main(['classify-video', videos, '--model', os.path.join(ACT, 'deploy_lstm.prototxt'),
                     '--weights', random_weights['deploy_lstm'], '--input-kind', 'rgb',
                     '--flow-model', os.path.join(ACT, 'deploy_singleFrame.prototxt'),
                     '--flow-weights', random_weights['deploy_singleFrame'], '--flow-weight', '0.67',
                     '--index', '0', '--index', '3', '--clips', '--json', js])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'videos_test.h5[0]:' in out and 'videos_test.h5[3]:' in out and 'clip 0:' in out
    assert 'fusion (0.33 rgb / 0.67 flow): video accuracy' in out
    res = json.load(open(js))
    assert len(res['videos']) == 2 and len(res['videos'][0]['clip_probs']) == 1
    assert res['videos'][0]['prediction'] in mm.CLASSES
    # a .npy of frames, flow computed on the fly for a flow net
    npy = str(tmp_path / 'v.npy')
    with h5py.File(videos, 'r') as f:
        np.save(npy, f['rgb'][0])
    code = cli.main(['classify-video', npy, '--model', os.path.join(ACT, 'deploy_singleFrame.prototxt'),
                     '--weights', random_weights['deploy_singleFrame'], '--input-kind', 'flow',
                     '--clip-length', '8', '--clip-stride', '4'])
    out = capsys.readouterr().out
    assert code == 0 and 'v.npy:' in out
    # a folder of frame images (channels last), class names from a file
    from PIL import Image
    (tmp_path / 'frames').mkdir()
    for i, fr in enumerate(np.load(npy)):
        Image.fromarray(fr.transpose(1, 2, 0)).save(tmp_path / 'frames' / ('%03d.png' % i))
    (tmp_path / 'names.txt').write_text('\n'.join(mm.CLASSES) + '\n')
    code = cli.main(['classify-video', str(tmp_path / 'frames'), '--model',
                     os.path.join(ACT, 'deploy_lstm.prototxt'), '--weights', random_weights['deploy_lstm'],
                     '--labels', str(tmp_path / 'names.txt')])
    out = capsys.readouterr().out
    assert code == 0 and out.split(': ')[1].split(' (')[0] in mm.CLASSES, out
    # errors are reported, not raised
    code = cli.main(['classify-video', npy, '--model', os.path.join(ACT, 'deploy_lstm.prototxt'),
                     '--weights', random_weights['deploy_lstm'], '--clip-length', '8'])
    assert code == 2
    assert 'clips of 16 frames' in capsys.readouterr().err
