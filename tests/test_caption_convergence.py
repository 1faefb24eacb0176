"""Issue 14 §3: early stopping on a validation output, the compositional scene
split of ``minicaffe data captions``, and a tiny end-to-end run of
tools/lrcn_caption_convergence.py (train with a val curve and early stopping,
evaluate against the retrieval baselines, write the docs section)."""
import json
import os
import sys

import numpy as np
import pytest

from minicaffe.lrcn.datasets import captions
from minicaffe.errors import DataSourceError, MinicaffeError
from minicaffe.solvers import Solver, SolverAction, read_solver_param
from minicaffe.solvers.early_stopping import EarlyStopping
from test_solve import make_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import lrcn_caption_convergence as conv  # noqa: E402


# ------------------------------------------------------------------ early stopping
class _Recorder(object):
    def __init__(self):
        self.lines = []

    def train(self, *a):
        self.lines.append(('train',) + a)

    def test(self, *a):
        self.lines.append(('test',) + a)

    def close(self):
        self.lines.append(('close',))


def test_stops_after_patience_tests_without_improvement():
    es = EarlyStopping('loss', patience=2)
    for it, v in [(10, 1.0), (20, 0.8), (30, 0.9), (40, 0.7), (50, 0.75)]:
        es.test(it, 0, {'loss': v})
        assert not es.stopped and es.request() == SolverAction.NONE
    es.test(60, 0, {'loss': 0.7})          # a tie with the best is no improvement: 2 bad tests
    assert es.stopped and es.stopped_at == 60 and es.request() == SolverAction.STOP
    assert (es.best, es.best_iter) == (0.7, 40)
    es.test(70, 0, {'loss': 0.1})          # tests after the stop are recorded, the stop stays
    assert es.stopped_at == 60 and es.history[-1] == (70, 0.1)


def test_min_delta_max_mode_other_test_nets_and_nan():
    es = EarlyStopping('acc', patience=1, min_delta=0.05, mode='max', test_net=1)
    es.test(10, 0, {'acc': 0.9})            # another test net: ignored
    es.test(10, 1, {'acc': 0.5})
    es.test(20, 1, {'acc': float('nan')})   # NaN never improves
    assert es.stopped and es.best == 0.5
    es = EarlyStopping('acc', patience=1, min_delta=0.05, mode='max')
    es.test(10, 0, {'acc': 0.5})
    es.test(20, 0, {'acc': 0.54})           # not above best + min_delta
    assert es.stopped and es.best_iter == 10


def test_bad_settings_and_missing_output_are_clear_errors():
    with pytest.raises(MinicaffeError, match='mode'):
        EarlyStopping('loss', mode='lowest')
    with pytest.raises(MinicaffeError, match='patience'):
        EarlyStopping('loss', patience=0)
    with pytest.raises(MinicaffeError, match='no output "loss".*acc'):
        EarlyStopping('loss').test(10, 0, {'acc': 0.5})


def test_attach_chains_the_metrics_writer_and_the_action_request():
    class FakeSolver(object):
        net = type('FakeNet', (), {'learnable_params': []})()
        metrics = _Recorder()
        action_request = staticmethod(lambda: SolverAction.SNAPSHOT)
    s = FakeSolver()
    rec = s.metrics
    es = EarlyStopping('loss', patience=1).attach(s)
    assert s.metrics is es and s.action_request() == SolverAction.SNAPSHOT
    s.metrics.train(1, 0.1, 2.0, 2.0, None)
    s.metrics.test(2, 0, {'loss': 1.0})
    s.metrics.test(4, 0, {'loss': 1.5})
    s.metrics.close()
    assert [l[0] for l in rec.lines] == ['train', 'test', 'test', 'close']
    assert s.action_request() == SolverAction.STOP


def test_solver_stops_and_keeps_the_best_weights(tmp_path):
    """A real solve with a test every 2 iterations: min_delta so large that no test
    after the first improves, patience 2 -> tests at 2, 4, 6, stop after iteration 6;
    restore_best gives back the weights of iteration 2 exactly."""
    path = make_case(tmp_path, solver_extra='test_iter: 1\ntest_interval: 2\ntest_initialization: false\n')
    param = read_solver_param(path)
    param.max_iter = 20
    s = Solver(param, logger=lambda m: None)
    rec = _Recorder()
    s.metrics = rec
    es = EarlyStopping('loss', patience=2, min_delta=1e9).attach(s)
    weights_at = {}

    def on_start():
        weights_at[s.iter] = [np.array(b.data) for b in s.net.learnable_params]
    s.add_callback(on_start, None)
    s.step(20)
    assert es.stopped_at == 6 and es.best_iter == 2
    assert s.iter == 7                      # the iteration after the last test still runs
    assert [l[1] for l in rec.lines if l[0] == 'test'] == [2, 4, 6]
    assert not np.array_equal(s.net.learnable_params[0].data, weights_at[2][0])
    assert es.restore_best()
    for blob, kept in zip(s.net.learnable_params, weights_at[2]):
        assert np.array_equal(blob.data, kept)


# ------------------------------------------------------------------ compositional split
def test_compositional_pairs_partition_every_pair_and_keep_every_type():
    sets = captions.compositional_pairs(1701)
    n_types = len(captions.object_types())
    assert sum(len(v) for v in sets.values()) == n_types * (n_types - 1) // 2
    assert not (sets['train'] & sets['val']) and not (sets['train'] & sets['test']) \
        and not (sets['val'] & sets['test'])
    assert len(sets['val']) + len(sets['test']) == round(0.25 * 276)
    for t in captions.object_types():
        assert any(t in p for p in sets['train'])
    assert captions.compositional_pairs(1701) == sets
    assert captions.compositional_pairs(1702) != sets
    with pytest.raises(DataSourceError, match='heldout-pairs'):
        captions.compositional_pairs(1701, heldout=0.999)


def test_scenes_drawn_from_pairs_use_only_those_pairs():
    sets = captions.compositional_pairs(3)
    _, refs, scenes = captions.generate_scenes(60, seed=4, pairs=sets['test'], two_object_fraction=1.0)
    for sc in scenes:
        assert len(sc['objects']) == 2 and captions.type_pair(*sc['objects']) in sets['test']
    _, _, scenes = captions.generate_scenes(80, seed=4, pairs=sets['train'])
    pairs = [captions.type_pair(*sc['objects']) for sc in scenes if len(sc['objects']) == 2]
    assert pairs and all(p in sets['train'] for p in pairs)
    assert any(len(sc['objects']) == 1 for sc in scenes)     # one-object scenes stay in training


def test_default_split_is_unchanged_and_compositional_test_pairs_are_unseen(tmp_path):
    a = captions.prepare_scenes(str(tmp_path / 'a'), n_train=60, n_val=10, n_test=20, seed=5)
    img, refs, _ = captions.generate_scenes(20, seed=5 * 10 + 2)
    assert a['split'] == 'random'
    saved = json.load(open(str(tmp_path / 'a' / 'scenes' / 'test_captions.json')))
    assert [r['references'] for r in saved] == refs
    b = captions.prepare_scenes(str(tmp_path / 'b'), n_train=200, n_val=10, n_test=20, seed=5,
                                split='compositional')
    assert b['split'] == 'compositional' and len(b['pairs']['test']) > 0
    train_pairs, test_pairs = set(), set()
    for split, into in (('train', train_pairs), ('test', test_pairs)):
        for r in json.load(open(os.path.join(str(tmp_path), 'b', 'scenes', '%s_captions.json' % split))):
            p = conv.parse_caption(r['references'][0])
            if len(p[0]) == 2:
                into.add(conv.types_of(p))
            elif split == 'test':
                raise AssertionError('a one-object scene in the compositional test split')
    assert test_pairs and not (train_pairs & test_pairs)
    with pytest.raises(DataSourceError, match='split'):
        captions.prepare_scenes(str(tmp_path / 'c'), n_train=4, n_val=4, n_test=4, split='shuffled')


def test_data_captions_command_line_split_flag(tmp_path):
    import argparse
    p = argparse.ArgumentParser()
    captions.add_arguments(p)
    args = p.parse_args([])
    assert args.split == 'random' and args.heldout_pairs == 0.25
    args = p.parse_args(['--out', str(tmp_path), '--split', 'compositional', '--train', '30',
                         '--val', '6', '--test', '6', '--tuxpaint-dir', str(tmp_path / 'none')])
    assert captions.run(args) == 0
    meta = json.load(open(str(tmp_path / 'scenes' / 'meta.json')))
    assert meta['split'] == 'compositional' and meta['heldout_pairs'] == 0.25


# ------------------------------------------------------------------ parsing and judging captions
def test_every_grammar_sentence_parses_to_its_scene():
    _, refs, scenes = captions.generate_scenes(40, seed=11)
    for rr, sc in zip(refs, scenes):
        truth = conv.parse_caption(rr[0])
        assert [(o[1], o[2]) for o in truth[0]] == [(o['colour'], o['shape']) for o in sc['objects']]
        assert [o[0] for o in truth[0]] == [o['size'] for o in sc['objects']]
        assert truth[1] == sc['relation']
        for r in rr:                         # every reference is a right description
            assert conv.judge(r, truth)['correct'], r
    assert conv.parse_caption('a red square above') is None
    assert conv.parse_caption('a red square and a') is None


def test_judge_catches_each_kind_of_error():
    truth = conv.parse_caption('a small red square above a large blue circle')
    ok = conv.judge('a big blue circle below a small red square', truth)
    assert ok['correct'] and ok['relation_right'] and ok['form'] == 'relation'
    assert conv.judge('a red square and a blue circle', truth)['correct']
    assert conv.judge('a red square above a blue square', truth)['relation_right'] is None
    assert not conv.judge('a red square below a blue circle', truth)['correct']      # relation
    assert not conv.judge('a large red square above a large blue circle', truth)['correct']  # size
    wrong = conv.judge('a red square and a blue square', truth)                       # shape
    assert not wrong['correct'] and wrong['recall'] == 0.5 and not wrong['shapes_right']
    assert wrong['colours_right']
    assert conv.judge('a red square', truth)['recall'] == 0.5
    assert conv.judge('red red red', truth)['form'] == 'other'


def test_correct_sentences_are_right_and_draw_large_or_big():
    _, refs, _ = captions.generate_scenes(60, seed=12)
    truths = [conv.parse_caption(r[0]) for r in refs]
    out = conv.correct_sentences(truths, np.random.default_rng(0))
    assert all(conv.judge(c, t)['correct'] for c, t in zip(out, truths))
    words = ' '.join(out).split()
    assert 'big' in words and 'large' in words


# ------------------------------------------------------------------ the experiment script, tiny
def test_tiny_end_to_end_run_with_val_curve_and_early_stopping(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                   # the solver's net paths are relative to the root
    data = str(tmp_path / 'captions')
    captions.prepare_scenes(data, n_train=30, n_val=20, n_test=6, seed=5, split='compositional')
    run = str(tmp_path / 'run')
    conv.main(['train', '--data', os.path.join(data, 'scenes'), '--run', run, '--max-iter', '40',
               '--test-interval', '2', '--test-iter', '2', '--patience', '2', '--min-delta', '1e9', '--stepsize', '10'])
    r = json.load(open(os.path.join(run, 'result.json')))
    assert r['stopped_early'] and r['stopped_at'] == 6 and r['best_iter'] == 2 and r['iters_run'] == 7
    assert [it for it, _ in r['val_curve']] == [2, 4, 6]
    assert abs(r['best_val_loss_check'] - r['best_val_loss']) < 1e-5     # the best weights were kept
    tests = [json.loads(l) for l in open(r['metrics']) if '"test"' in l]
    assert [t['iter'] for t in tests] == [2, 4, 6] and 'cross_entropy_loss' in tests[0]
    assert os.path.join(data, 'scenes') in open(os.path.join(run, 'net.prototxt')).read()
    conv.main(['evaluate', '--run', run, '--test-images', '4', '--max-length', '6'])
    ev = json.load(open(os.path.join(run, 'evaluation.json')))
    for k in ('lrcn_beam1', 'lrcn_beam3', 'nn_pixels', 'nn_fc8', 'oracle_retrieval', 'correct_full'):
        assert len(ev['systems'][k]['bleu']) == 4
    assert ev['systems']['correct_full']['correct'] == 1.0
    assert ev['twin_fraction'] == 0.0 and ev['pair_seen_fraction'] == 0.0  # compositional: unseen pairs
    docs = str(tmp_path / 'results.md')
    with open(docs, 'w') as f:
        f.write('# LRCN results\n\n## Image captioning\n\nkept\n\n## Activity recognition\n\nkept too\n')
    conv.main(['docs', run, '--docs', docs, '--png-prefix', 'curves_tiny'])
    text = open(docs).read()
    assert conv.HEADING in text and text.count('kept') == 2
    png = str(tmp_path / 'curves_tiny_compositional_lrcn_1u.png')
    assert os.path.exists(png) == os.path.exists(os.path.join(run, 'curves.png'))
    assert ('![' in text) == os.path.exists(png)


def test_oracle_retrieval_prefers_the_same_scene_then_the_pair_then_shared_types():
    train = ['a small red square above a large blue circle',      # 0: twin of the test scene
             'red square red',                                     # not a sentence of the grammar
             'a small red square below a small blue circle',       # 2: same pair, other relation
             'a small red square above a large green cross',       # 3: one type in common
             'a large white cross']                                # 4: nothing in common
    train_refs = [[t] for t in train]
    truths = [conv.parse_caption(t) for t in train]
    assert truths[1] is None
    train_refs, truths = [r for r, t in zip(train_refs, truths) if t], [t for t in truths if t]
    keys, types, by_type = {}, {}, {}
    for i, t in enumerate(truths):
        keys.setdefault(conv.scene_key(t), []).append(i)
        types.setdefault(conv.types_of(t), []).append(i)
        for ty in set(conv.types_of(t)):
            by_type.setdefault(ty, []).append(i)

    def best(test_sentence, drop=()):
        t = conv.parse_caption(test_sentence)
        k = {key: [i for i in v if i not in drop] for key, v in keys.items()}
        ty = {key: [i for i in v if i not in drop] for key, v in types.items()}
        bt = {key: [i for i in v if i not in drop] for key, v in by_type.items()}
        return conv.best_retrieval(t, [test_sentence], train_refs, truths, k, ty, bt)
    test = 'a large blue circle below a small red square'
    assert best(test) == train[0]
    assert best(test, drop={0}) == train[2]
    assert best(test, drop={0, 1}) == train[3]      # index 1 of the kept list is train[2]
