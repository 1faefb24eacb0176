"""LRCN image captioning: BLEU, the caption data (LRCN's HDF5 layout), the shipped
nets for every stage combination, a short training run, and generation."""
import json
import math
import os

import h5py
import numpy as np
import pytest

from minicaffe.lrcn.bleu import bleu_scores, corpus_bleu, sentence_bleu
from minicaffe.lrcn.datasets import captions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAP = os.path.join(ROOT, 'prototxt', 'lrcn', 'caption')
VARIANTS = [['factored', '2-layer'], ['unfactored'], ['unfactored', '2-layer']]


# ------------------------------------------------------------------ BLEU
def test_bleu_clipped_unigram_precision_papineni_example():
    # Papineni et al.'s example: 'the' x7 against two references -> p1 = 2/7, BP = 1
    b1 = bleu_scores(['the the the the the the the'],
                     [['the cat is on the mat', 'there is a cat on the mat']], 1)[0]
    assert b1 == pytest.approx(2 / 7)


def test_bleu_hand_computed_one_sentence():
    # cand 'the cat sat on the mat' vs ref 'the cat is on the mat' (equal length, BP 1):
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3
    b = bleu_scores(['the cat sat on the mat'], [['the cat is on the mat']])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b[2] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert b[3] == 0.0


def test_bleu_brevity_penalty_and_corpus_pooling():
    # corpus: 'a b' (ref 'a b c d', closest length 4) and 'x y z' (refs of length 3 and 5 -> 3)
    # c = 5, r = 7, BP = exp(1 - 7/5); p1 = (2 + 3)/5 = 1, p2 = (1 + 2)/3 = 1
    cands = ['a b', 'x y z']
    refs = [['a b c d'], ['x y z', 'x y z w v']]
    b = bleu_scores(cands, refs, 2)
    bp = math.exp(1 - 7 / 5)
    assert b[0] == pytest.approx(bp)
    assert b[1] == pytest.approx(bp)
    # pooled, not averaged: 'a b' alone has BLEU-1 exp(1 - 4/2)
    assert sentence_bleu('a b', ['a b c d'], 1) == pytest.approx(math.exp(-1))


def test_bleu_closest_reference_length_tie_takes_shorter():
    # candidate length 4, references of length 3 and 5: r = 3, no penalty (r = 5 would
    # give exp(1 - 5/4))
    assert corpus_bleu(['a b c x'], [['a b c', 'a b c d e']], 1) == pytest.approx(3 / 4)


def test_bleu_perfect_and_empty():
    assert corpus_bleu(['a red square above a blue circle'],
                       [['a red square above a blue circle']]) == pytest.approx(1.0)
    assert corpus_bleu([''], [['a b']]) == 0.0
    with pytest.raises(ValueError):
        corpus_bleu(['a'], [])


# ------------------------------------------------------------------ data
def test_scenes_deterministic_with_seed_and_sentences_match_grammar():
    a_img, a_refs, a_sc = captions.generate_scenes(12, seed=3, size=32)
    b_img, b_refs, _ = captions.generate_scenes(12, seed=3, size=32)
    c_img, c_refs, _ = captions.generate_scenes(12, seed=4, size=32)
    assert np.array_equal(a_img, b_img) and a_refs == b_refs
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (12, 3, 32, 32) and a_img.dtype == np.uint8
    vocab = set(captions.SCENE_VOCAB)
    for refs, scene in zip(a_refs, a_sc):
        assert len(refs) == 3
        for r in refs:
            assert set(captions.tokenize(r)) <= vocab
        for o in scene['objects']:
            assert o['colour'] in refs[0] and o['shape'] in refs[0]
        if scene['relation']:
            assert scene['relation'] in refs[0]


def test_lrcn_stream_layout():
    cont, inp, tgt = captions.lrcn_streams([[5, 6, 7], [9]], T=5)
    assert cont[:, 0].tolist() == [0, 1, 1, 1, 0]
    assert inp[:, 0].tolist() == [0, 5, 6, 7, -1]
    assert tgt[:, 0].tolist() == [5, 6, 7, 0, -1]
    assert cont[:, 1].tolist() == [0, 1, 0, 0, 0]
    assert inp[:, 1].tolist() == [0, 9, -1, -1, -1]
    assert tgt[:, 1].tolist() == [9, 0, -1, -1, -1]
    # truncation keeps T steps (no EOS when cut)
    cont, inp, tgt = captions.lrcn_streams([[1, 2, 3, 4, 5, 6]], T=4)
    assert inp[:, 0].tolist() == [0, 1, 2, 3] and tgt[:, 0].tolist() == [1, 2, 3, 4]
    x = np.arange(3 * 4).reshape(3, 4).astype(np.float32)
    assert np.array_equal(captions.unbatch(captions.batch_major(x, 2), 3), x)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('captions'))
    captions.prepare_scenes(out, n_train=20, n_val=20, n_test=8, seed=5)
    return os.path.join(out, 'scenes')


def test_written_files_follow_lrcn_layout(tiny):
    vocab = captions.load_vocabulary(os.path.join(tiny, 'vocabulary.txt'))
    assert vocab == captions.SCENE_VOCAB and len(vocab) + 1 == 26
    with h5py.File(os.path.join(tiny, 'train_sentences.h5'), 'r') as f:
        cont, inp, tgt = (f[k][:] for k in ('cont_sentence', 'input_sentence', 'target_sentence'))
    with h5py.File(os.path.join(tiny, 'train_pair_images.h5'), 'r') as f:
        pair_images = f['data'][:]
    assert cont.shape == (16, 50) and pair_images.shape == (50, 3, 32, 32)
    with h5py.File(os.path.join(tiny, 'train_images.h5'), 'r') as f:
        images = f['data'][:]
    refs = json.load(open(os.path.join(tiny, 'train_captions.json')))
    assert (cont[0] == 0).all() and (inp[0] == 0).all()
    for j in range(50):
        L = int(cont[:, j].sum())                        # words in the sentence
        assert (cont[1:L + 1, j] == 1).all() and (cont[L + 1:, j] == 0).all()
        assert tgt[L, j] == 0                            # EOS after the last word
        assert (tgt[L + 1:, j] == -1).all() and (inp[L + 1:, j] == -1).all()
        assert np.array_equal(inp[1:L + 1, j], tgt[:L, j])
        words = captions.decode(tgt[:, j], vocab)
        # the stream's image is the image whose references hold the sentence
        k = [i for i in range(len(images)) if np.array_equal(images[i], pair_images[j])]
        assert k and ' '.join(words) in refs[k[0]]['references']


def test_tuxpaint_missing_gives_a_clear_message(tmp_path):
    from minicaffe.errors import DataSourceError
    with pytest.raises(DataSourceError, match='tuxpaint-stamps-default'):
        captions.find_tuxpaint(str(tmp_path / 'nowhere'))
    logs = []
    captions.prepare(str(tmp_path / 'out'), tuxpaint_dir=str(tmp_path / 'nowhere'), n_train=4,
                     n_val=2, n_test=2, log=logs.append)
    assert any('tuxpaint set skipped' in l for l in logs)
    assert os.path.exists(tmp_path / 'out' / 'scenes' / 'train_sentences.h5')


def test_tuxpaint_vocabulary_is_fixed_size():
    v = captions.tuxpaint_vocabulary(['A frog.', 'A red frog!', 'The letter Q.'])
    assert len(v) == 300 and v[0] == 'a' and v[1] == 'frog' and '<unk>' in v
    assert captions.encode(['a', 'zebra'], {w: i for i, w in enumerate(v)}) == [1, v.index('<unk>') + 1]


# ------------------------------------------------------------------ nets
def _net_param(path, data_dir):
    from minicaffe.net import read_net_param
    p = read_net_param(path)
    for l in p.layer:
        if l.type == 'HDF5Data':
            l.hdf5_data_param.source = l.hdf5_data_param.source.replace(
                'data/captions/scenes', data_dir)
    return p


def _point_lists(data_dir):
    # the list files name the .h5 files by the path given at writing: already absolute here
    return data_dir


@pytest.mark.parametrize('stages', VARIANTS + [['factored', '2-layer', 'freeze-convnet']])
def test_shipped_lrcn_builds_for_each_stage_combination(tiny, stages):
    from minicaffe.net import Net, TRAIN, TEST
    p = _net_param(os.path.join(CAP, 'lrcn.prototxt'), tiny)
    net = Net(net_param=p, phase=TRAIN, stages=stages)
    names = list(net.layer_dict)
    assert ('lstm2' in names) == ('2-layer' in stages)
    assert net.blobs['predict'].shape == (16, 50, 26)
    lstm_with_image = 'lstm2' if 'factored' in stages else 'lstm1'
    lid = list(names).index(lstm_with_image)
    assert 'fc8' in net.bottom_names[lstm_with_image]
    loss = net.forward_all_loss()
    assert loss == pytest.approx(20 * math.log(26), rel=0.02)
    frozen = 'freeze-convnet' in stages
    conv1 = net.layer_dict['conv1']
    assert net.layers[lid] is not None and (conv1.layer_param.param[0].lr_mult == 0) == frozen
    for val_stage in ('test-on-train', 'test-on-val'):
        t = Net(net_param=p, phase=TEST, stages=stages + [val_stage])
        out = t.forward()
        assert 0 <= float(out['accuracy']) <= 1


def test_shipped_deploy_nets_build_and_share_names(tiny):
    from minicaffe.net import Net, TEST
    img = Net(os.path.join(CAP, 'image_to_feature.deploy.prototxt'), TEST)
    assert img.blobs['fc8'].shape == (10, 64)
    for stages in VARIANTS:
        w = Net(os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'), TEST, stages=stages)
        assert w.blobs['probs'].shape == (1, 10, 26)
    lm = Net(os.path.join(CAP, 'lstm_lm.deploy.prototxt'), TEST)
    assert lm.blobs['probs'].shape == (1, 10, 26)
    lmt = Net(net_param=_net_param(os.path.join(CAP, 'lstm_language_model.prototxt'), tiny),
              phase=TEST, stages=['test-on-val'])
    assert lmt.blobs['predict'].shape == (16, 50, 26)


@pytest.fixture(scope='module')
def trained(tiny, tmp_path_factory):
    """The shipped factored 2-layer net and solver, 30 SGD iterations (lr 0.1) on the tiny set (one batch)."""
    from minicaffe.solvers.solver import Solver, read_solver_param
    sp = read_solver_param(os.path.join(CAP, 'lrcn_solver.prototxt'))
    sp.ClearField('net')
    sp.net_param.CopyFrom(_net_param(os.path.join(CAP, 'lrcn.prototxt'), tiny))
    sp.ClearField('test_iter')
    sp.ClearField('test_state')
    sp.test_interval = 0
    sp.max_iter, sp.display, sp.snapshot = 30, 0, 0
    sp.base_lr = 0.1        # the shipped solver's net and settings, a faster rate for 30 steps
    solver = Solver(sp, logger=lambda m: None)
    net = solver.net
    first = net.forward_all_loss()
    solver.step(30)
    last = net.forward_all_loss()
    path = str(tmp_path_factory.mktemp('w') / 'lrcn.caffemodel')
    net.save(path)
    return first, last, path


def test_training_lowers_the_loss(trained):
    first, last, _ = trained
    assert last < 0.8 * first


@pytest.fixture(scope='module')
def captioner(tiny, trained):
    from minicaffe.lrcn.captioner import Captioner
    return Captioner(trained[2], os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'),
                     os.path.join(tiny, 'vocabulary.txt'),
                     os.path.join(CAP, 'image_to_feature.deploy.prototxt'), ['factored', '2-layer'])


def _valid(caption, max_length, V):
    assert 1 <= len(caption) <= max_length
    assert all(0 <= w < V for w in caption)
    assert 0 not in caption[:-1]                      # nothing after EOS
    assert caption[-1] == 0 or len(caption) == max_length


def test_generation_gives_valid_sentences(tiny, captioner):
    with h5py.File(os.path.join(tiny, 'test_images.h5'), 'r') as f:
        images = f['data'][:]
    feats = captioner.compute_features(images)
    assert feats.shape == (8, 64)
    V = len(captioner.vocab)
    greedy = captioner.greedy(feats, max_length=12)
    rng = np.random.default_rng(0)
    sampled = captioner.sample(feats, temperature=1.0, max_length=12, rng=rng)
    hot = captioner.sample(feats, temperature=5.0, max_length=3, rng=rng)
    beams = captioner.beam_search(feats, beam_size=3, max_length=12)
    for g, s, h, b in zip(greedy, sampled, hot, beams):
        _valid(g, 12, V)
        _valid(s, 12, V)
        _valid(h, 3, V)
        assert len(b) == 3
        assert [lp for _, lp in b] == sorted([lp for _, lp in b], reverse=True)
        for words, lp in b:
            _valid(words, 12, V)
            assert lp <= 0
        for w in captioner.words(g):
            assert w in captioner.vocab[1:]
    s = captioner.sentence(greedy[0])
    assert s.endswith('.') or s.endswith('...')


def test_beam_size_one_is_greedy_and_beam_scores_are_log_probs(tiny, captioner):
    with h5py.File(os.path.join(tiny, 'test_images.h5'), 'r') as f:
        images = f['data'][:]
    feats = captioner.compute_features(images)
    greedy = captioner.greedy(feats, max_length=12)
    beams = captioner.beam_search(feats, beam_size=1, max_length=12)
    assert [b[0][0] for b in beams] == greedy
    # the beam's score is the sum of the word log probs under carried-state decoding
    words, lp = captioner.beam_search(feats[:1], beam_size=2, max_length=12)[0][0]
    total, prev = 0.0, 0
    for t, w in enumerate(words):
        probs, _ = captioner.step(np.array([prev], np.float32),
                                  np.array([0.0 if t == 0 else 1.0], np.float32), feats[:1])
        total += math.log(probs[0, w])
        prev = w
    assert total == pytest.approx(lp, rel=1e-5, abs=1e-5)
    # a wider beam never finds a less probable best caption than beam 1 does
    for b1, b3 in zip(beams, captioner.beam_search(feats, beam_size=3, max_length=12)):
        assert b3[0][1] >= b1[0][1] - 1e-6


def test_caption_command_writes_text_and_grid(tiny, trained, tmp_path):
    from PIL import Image
    from minicaffe.lrcn import captioner as C
    out = str(tmp_path / 'caps.txt')
    grid = str(tmp_path / 'grid.png')
    png = str(tmp_path / 'one.png')
    with h5py.File(os.path.join(tiny, 'test_images.h5'), 'r') as f:
        Image.fromarray(f['data'][0].transpose(1, 2, 0)).save(png)
    rc = C.main([os.path.join(tiny, 'test_images.h5'), png, '--limit', '4', '--weights',
                 trained[2], '--vocab', os.path.join(tiny, 'vocabulary.txt'), '--beam-size', '2',
                 '--image-net', os.path.join(CAP, 'image_to_feature.deploy.prototxt'),
                 '--word-net', os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'),
                 '--out', out, '--grid', grid])
    assert rc == 0
    lines = open(out).read().splitlines()
    assert len(lines) == 4
    assert Image.open(grid).size[0] > 4 * 32
    res = json.load(open(str(tmp_path / 'caps.json')))
    assert len(res[0]['captions']) == 2
    # a vocabulary that does not fit the net is refused with a message
    bad = tmp_path / 'vocab.txt'
    bad.write_text('a\nb\n')
    assert C.main([png, '--weights', trained[2], '--vocab', str(bad), '--out', out,
                   '--grid', '']) == 2     # minicaffe: error: ..., exit 2


def test_caption_defaults_work_from_any_folder(tiny, trained, tmp_path, monkeypatch, capsys):
    """Run elsewhere: the shipped nets are found from the package, the vocabulary beside
    (or above) the word net, and the outputs go beside the weights, not into the folder
    the command runs in.  Skipped source layers make one log line per weights file."""
    import shutil
    from minicaffe.commands import cli
    checkout = tmp_path / 'checkout'
    nets = checkout / 'prototxt' / 'lrcn' / 'caption'
    nets.mkdir(parents=True)
    shutil.copy(os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'), str(nets))
    vocab = checkout / 'data' / 'captions' / 'scenes' / 'vocabulary.txt'
    vocab.parent.mkdir(parents=True)
    shutil.copy(os.path.join(tiny, 'vocabulary.txt'), str(vocab))
    run = tmp_path / 'run'
    run.mkdir()
    weights = str(run / 'lrcn_iter_30.caffemodel')
    shutil.copy(trained[2], weights)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))
    rc = cli.main(['caption', os.path.join(tiny, 'test_images.h5'), '--limit', '3',
                   '--weights', weights, '--word-net', str(nets / 'lrcn_word_to_preds.deploy.prototxt')])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert os.listdir(str(elsewhere)) == []
    for name in ('lrcn_iter_30_captions.txt', 'lrcn_iter_30_captions.json',
                 'lrcn_iter_30_captions.png'):
        assert (run / name).exists(), name
    assert len((run / 'lrcn_iter_30_captions.txt').read_text().splitlines()) == 3
    assert out.splitlines()[-1] == 'Wrote %s' % ', '.join(
        str(run / n) for n in ('lrcn_iter_30_captions.txt', 'lrcn_iter_30_captions.json',
                               'lrcn_iter_30_captions.png'))
    # two nets read the weights file: one "Ignoring source layer" line each, not one per layer
    ignoring = [l for l in err.splitlines() if '] Ignoring source layer' in l]
    assert len(ignoring) == 2 and all('layers of %s' % weights in l for l in ignoring)
    # an explicit --out, no grid; a missing vocabulary is a clear error
    assert cli.main(['-q', 'caption', os.path.join(tiny, 'test_images.h5'), '--limit', '2',
                     '--weights', weights, '--word-net', str(nets / 'lrcn_word_to_preds.deploy.prototxt'),
                     '--out', 'mine.txt', '--grid', 'none']) == 0
    assert sorted(os.listdir(str(elsewhere))) == ['mine.json', 'mine.txt']
    capsys.readouterr()
    bare = tmp_path / 'bare'                 # a word net with no data beside or above it
    bare.mkdir()
    shutil.copy(os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'), str(bare))
    assert cli.main(['caption', os.path.join(tiny, 'test_images.h5'), '--weights', weights,
                     '--word-net', str(bare / 'lrcn_word_to_preds.deploy.prototxt')]) == 2
    err = capsys.readouterr().err
    assert 'vocabulary' in err and '--vocab' in err and 'minicaffe data captions' in err


def test_find_default_looks_beside_and_above_the_net(tmp_path, monkeypatch):
    from minicaffe.lrcn.captioner import find_default
    net = tmp_path / 'root' / 'prototxt' / 'x' / 'net.prototxt'
    net.parent.mkdir(parents=True)
    net.write_text('')
    (tmp_path / 'root' / 'data').mkdir()
    (tmp_path / 'root' / 'data' / 'v.txt').write_text('a\n')
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(str(tmp_path / 'cwd'))
    assert find_default(os.path.join('data', 'v.txt'), str(net)) == str(tmp_path / 'root' / 'data' / 'v.txt')
    assert find_default('missing.txt', str(net)) == 'missing.txt'
    (tmp_path / 'cwd' / 'data').mkdir()
    (tmp_path / 'cwd' / 'data' / 'v.txt').write_text('b\n')
    assert find_default(os.path.join('data', 'v.txt'), str(net)) == os.path.join('data', 'v.txt')


def test_grid_text_keeps_the_spaces_between_words():
    from PIL import ImageFont
    from minicaffe.lrcn.captioner import layout_words
    font = ImageFont.load_default()
    lines = layout_words('A small white cross and a red circle on the left.', font, 128)
    assert len(lines) > 1
    words = [w for line in lines for w, _ in line]
    assert ' '.join(words) == 'A small white cross and a red circle on the left.'
    gap = 0.75 * font.getlength('n')
    for line in lines:
        assert line[0][1] == 0
        for (w0, x0), (w1, x1) in zip(line, line[1:]):
            assert x1 - (x0 + font.getlength(w0)) >= gap - 1      # a visible space
        last_word, last_x = line[-1]
        assert last_x + font.getlength(last_word) <= 128
    assert layout_words('', font, 100) == [[]]
    assert layout_words('extraordinarily', font, 10) == [[('extraordinarily', 0)]]
