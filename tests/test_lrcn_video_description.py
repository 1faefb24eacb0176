"""LRCN video description: generated clips with subject/verb/object and sentences, the
shipped classifier and decoder nets, a short decoder training, and generation."""
import json
import math
import os

import h5py
import numpy as np
import pytest

from minicaffe.lrcn.datasets import captions
from minicaffe.lrcn.datasets import video_description as vd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VDP = os.path.join(ROOT, 'prototxt', 'lrcn', 'video_description')


def test_clips_deterministic_and_labelled():
    a = vd.generate(10, seed=2)
    b = vd.generate(10, seed=2)
    c = vd.generate(10, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    clips, labels, refs = a
    assert clips.shape == (10, 24, 24, 24) and clips.dtype == np.uint8
    for (s, v, o), r in zip(labels, refs):
        assert s != o and 0 <= v < len(vd.VERBS)
        assert len(r) == 2
        for sent in r:
            assert sent.startswith('the %s %s ' % vd.ENTITIES[s])
            assert sent.endswith(' the %s %s' % vd.ENTITIES[o])
            assert set(sent.split()) <= set(vd.VOCAB)
        oh = vd.svo_onehot(s, v, o)
        assert oh.sum() == 3 and oh[s] == 1 and oh[6 + v] == 1 and oh[11 + o] == 1


def test_motion_carries_the_verb():
    # approach and leave differ only in the direction of time: same frame statistics, and the
    # subject's distance to the object shrinks for approach and grows for leave
    rs = np.random.default_rng(0)
    a = vd._trajectory('approach', rs, 24, 8, 2.9)
    l = vd._trajectory('leave', rs, 24, 8, 2.9)
    da = np.linalg.norm(a[:, 0] - a[:, 1], axis=1)
    dl = np.linalg.norm(l[:, 0] - l[:, 1], axis=1)
    assert (np.diff(da) < 0).all() and (np.diff(dl) > 0).all()
    p = vd._trajectory('push', rs, 24, 8, 2.9)
    assert np.allclose(p[:4, 1], p[0, 1]) and not np.allclose(p[-1, 1], p[0, 1])  # object moves late


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('vd'))
    vd.prepare(out, n_train=50, n_val=50, n_test=10, seed=4)
    return out


def test_written_files_follow_lrcn_layout(tiny):
    with h5py.File(os.path.join(tiny, 'train_sentences.h5'), 'r') as f:
        cont, inp, tgt = (f[k][:] for k in ('cont_sentence', 'input_sentence', 'target_sentence'))
    with h5py.File(os.path.join(tiny, 'train_svo_pairs.h5'), 'r') as f:
        svo = f['svo'][:]
    assert cont.shape == (10, 50) and svo.shape == (50, 17)
    assert (cont[0] == 0).all() and (inp[0] == 0).all()
    vocab = captions.load_vocabulary(os.path.join(tiny, 'vocabulary.txt'))
    assert vocab == vd.VOCAB and len(vocab) + 1 == 27
    for j in range(50):
        L = int(cont[:, j].sum())
        assert tgt[L, j] == 0 and (tgt[L + 1:, j] == -1).all() and (inp[L + 1:, j] == -1).all()
        words = captions.decode(tgt[:, j], vocab)
        s, v, o = (int(np.flatnonzero(svo[j, a:b])[0]) for a, b in ((0, 6), (6, 11), (11, 17)))
        assert ' '.join(words) in vd.sentences(s, v, o)
    refs = json.load(open(os.path.join(tiny, 'train_captions.json')))
    with h5py.File(os.path.join(tiny, 'train_clips.h5'), 'r') as f:
        assert f['clip'].shape == (50, 24, 24, 24)
        assert refs[3]['svo'] == [int(f['subject'][3]), int(f['verb'][3]), int(f['object'][3])]


def _param(path, data_dir):
    from minicaffe.net import read_net_param
    p = read_net_param(path)
    for l in p.layer:
        if l.type == 'HDF5Data':
            l.hdf5_data_param.source = l.hdf5_data_param.source.replace('data/video_description', data_dir)
    return p


def test_shipped_classifier_builds_and_learns(tiny):
    from minicaffe.net import Net, TRAIN, TEST
    from minicaffe.solvers.solver import Solver, read_solver_param
    t = Net(net_param=_param(os.path.join(VDP, 'svo_classifier.prototxt'), tiny), phase=TEST)
    out = t.forward()
    assert {'accuracy_subject', 'accuracy_verb', 'accuracy_object'} <= set(out)
    d = Net(os.path.join(VDP, 'svo_classifier.deploy.prototxt'), TEST)
    assert d.blobs['prob_verb'].shape == (10, 5)
    sp = read_solver_param(os.path.join(VDP, 'svo_classifier_solver.prototxt'))
    sp.ClearField('net')
    sp.net_param.CopyFrom(_param(os.path.join(VDP, 'svo_classifier.prototxt'), tiny))
    sp.ClearField('test_iter')
    sp.test_interval = 0
    sp.display = sp.snapshot = 0
    s = Solver(sp, logger=lambda m: None)
    first = s.net.forward_all_loss()
    assert first == pytest.approx(2 * math.log(6) + math.log(5), rel=0.05)
    s.step(15)
    assert s.net.forward_all_loss() < first


@pytest.mark.parametrize('stages', [[], ['factored']])
def test_decoder_training_lowers_loss_and_generates_valid_sentences(tiny, stages, tmp_path):
    from minicaffe.lrcn.captioner import Captioner
    from minicaffe.solvers.solver import Solver, read_solver_param
    sp = read_solver_param(os.path.join(VDP, 'svo_decoder_solver.prototxt'))
    sp.ClearField('net')
    sp.net_param.CopyFrom(_param(os.path.join(VDP, 'svo_decoder.prototxt'), tiny))
    sp.ClearField('test_iter')
    sp.test_interval = 0
    sp.display = sp.snapshot = 0
    s = Solver(sp, stages=stages, logger=lambda m: None)
    assert ('lstm2' in s.net.layer_dict) == ('factored' in stages)
    first = s.net.forward_all_loss()
    assert first == pytest.approx(20 * math.log(27), rel=0.02)
    s.step(40)
    last = s.net.forward_all_loss()
    assert last < 0.7 * first
    w = str(tmp_path / 'dec.caffemodel')
    s.net.save(w)
    cap = Captioner(w, os.path.join(VDP, 'svo_word_to_preds.deploy.prototxt'),
                    os.path.join(tiny, 'vocabulary.txt'), stages=stages)
    labels = [(0, 2, 1), (3, 0, 5), (4, 4, 2)]
    feats = np.stack([vd.svo_onehot(*l) for l in labels])
    greedy = cap.greedy(feats, max_length=12)
    beams = cap.beam_search(feats, beam_size=1, max_length=12)
    assert [b[0][0] for b in beams] == greedy
    for g in greedy + [b[0][0] for b in cap.beam_search(feats, 3, 12)]:
        assert 1 <= len(g) <= 12 and (g[-1] == 0 or len(g) == 12) and 0 not in g[:-1]
        assert all(w in vd.VOCAB for w in cap.words(g))
    with pytest.raises(Exception, match='image net'):
        cap.compute_features(np.zeros((1, 3, 8, 8)))
