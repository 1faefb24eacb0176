#!/usr/bin/env python
"""LRCN video description experiment: regenerates the "## Video description" section
of docs/lrcn_results.md.

Run from the repository root (OMP_NUM_THREADS=2 for the shipped timing):

    python tools/lrcn_video_description_experiment.py          # shipped size, ~6 min on 2 cores
    python tools/lrcn_video_description_experiment.py --iters 30 --no-docs   # smoke run

The paper's third setting: a classifier predicts the subject-verb-object tuple of a
clip, and an LSTM decoder (prototxt/lrcn/video_description/svo_decoder.prototxt,
the tuple as static input, trained on ground-truth tuples) turns the tuple into a
sentence.  Reported: tuple accuracy of the classifier, and for the decoder fed the
ground-truth tuple (oracle) or the predicted tuple, sentence accuracy (generated
sentence equal to one of the two references) and corpus BLEU-1..4, against a
nearest-neighbour baseline (sentence of the training clip nearest in pixels).
"""
import argparse
import json
import os
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minicaffe.lrcn.bleu import bleu_scores  # noqa: E402
from minicaffe.lrcn.captioner import Captioner  # noqa: E402
from minicaffe.lrcn.datasets import video_description as vd  # noqa: E402

VD = 'prototxt/lrcn/video_description'


def train(solver_path, iters, log, stages=None):
    from minicaffe.solvers.solver import Solver, read_solver_param
    p = read_solver_param(solver_path)
    if iters:
        p.stepsize = max(1, int(p.stepsize * iters / p.max_iter))
        p.max_iter = iters
        p.test_interval = iters
    p.snapshot = 0
    t0, c0 = time.time(), time.process_time()
    s = Solver(p, stages=stages, logger=log)
    s.step(p.max_iter)
    wall, cpu = time.time() - t0, time.process_time() - c0
    os.makedirs(os.path.dirname(p.snapshot_prefix), exist_ok=True)
    weights = p.snapshot_prefix + ('_' + '_'.join(stages) if stages else '') + '_final.caffemodel'
    s.net.save(weights)
    return {'weights': weights, 'wall_s': wall, 'cpu_s': cpu, 'iters': int(p.max_iter),
            'train_loss': float(s.smoothed_loss)}


def load(folder, split):
    with h5py.File(os.path.join(folder, '%s_clips.h5' % split), 'r') as f:
        clips = f['clip'][:].astype(np.float32)
        labels = np.stack([f[k][:] for k in ('subject', 'verb', 'object')], 1).astype(np.int64)
    refs = [r['references'] for r in json.load(open(os.path.join(folder, '%s_captions.json' % split)))]
    return clips, labels, refs


def classify(weights, clips, batch=100):
    from minicaffe.net import Net, TEST
    net = Net(os.path.join(VD, 'svo_classifier.deploy.prototxt'), TEST, weights=weights)
    out = np.zeros((len(clips), 3), np.int64)
    for s in range(0, len(clips), batch):
        c = clips[s:s + batch]
        net.blobs['clip'].reshape(c.shape)
        net.reshape()
        net.blobs['clip'].data[...] = c
        net.forward()
        for j, h in enumerate(('subject', 'verb', 'object')):
            out[s:s + len(c), j] = net.blobs['prob_' + h].data.argmax(axis=1)
    return out


def describe(cap, labels, beam, max_length):
    feats = np.stack([vd.svo_onehot(*l) for l in labels])
    beams = cap.beam_search(feats, beam, max_length)
    return [' '.join(cap.words(b[0][0])) for b in beams]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='data/video_description')
    ap.add_argument('--iters', type=int, default=None, help='override max_iter of both solvers')
    ap.add_argument('--beam', type=int, default=3)
    ap.add_argument('--max-length', type=int, default=12)
    ap.add_argument('--docs', default='docs/lrcn_results.md')
    ap.add_argument('--no-docs', action='store_true')
    ap.add_argument('--verbose', action='store_true')
    args = ap.parse_args(argv)
    t_all = time.time()

    def log(m):
        print(m, flush=True)

    from lrcn_caption_experiment import _progress
    quiet = _progress(log, args.verbose)
    if not os.path.exists(os.path.join(args.data, 'meta.json')):
        vd.prepare(args.data)
    meta = json.load(open(os.path.join(args.data, 'meta.json')))
    train_clips, train_labels, train_refs = load(args.data, 'train')
    test_clips, test_labels, test_refs = load(args.data, 'test')

    log('=== SVO classifier')
    rc = train(os.path.join(VD, 'svo_classifier_solver.prototxt'), args.iters, quiet)
    pred = classify(rc['weights'], test_clips)
    slot_acc = (pred == test_labels).mean(axis=0)
    tuple_acc = float((pred == test_labels).all(axis=1).mean())
    log('  %d iterations in %.0f s; accuracy subject %.3f verb %.3f object %.3f tuple %.3f'
        % (rc['iters'], rc['wall_s'], slot_acc[0], slot_acc[1], slot_acc[2], tuple_acc))

    rows = []
    nn = _nearest(train_clips, test_clips)
    nn_sent = [train_refs[i][0] for i in nn]
    nn_labels = train_labels[nn]
    rows.append(('Nearest neighbour clip (pixels): its sentence', '–', nn_sent,
                 float((nn_labels == test_labels).all(axis=1).mean())))
    decoders = {}
    for stages, label in (([], 'LSTM decoder (1 layer, tuple into the LSTM)'),
                          (['factored'], 'LSTM decoder (factored, 2 layers)')):
        log('=== %s' % label)
        rd = train(os.path.join(VD, 'svo_decoder_solver.prototxt'), args.iters, quiet, stages)
        log('  %d iterations in %.0f s' % (rd['iters'], rd['wall_s']))
        cap = Captioner(rd['weights'], os.path.join(VD, 'svo_word_to_preds.deploy.prototxt'),
                        os.path.join(args.data, 'vocabulary.txt'),
                        image_net_proto=None, stages=stages)
        decoders[label] = rd
        for src, labs in (('ground-truth tuple', test_labels), ('predicted tuple', pred)):
            for beam in (1, args.beam):
                sents = describe(cap, labs, beam, args.max_length)
                rows.append(('%s, %s, beam %d' % (label, src, beam), rd, sents, None))
    total = time.time() - t_all
    log('total wall time %.0f s' % total)

    lines = ['| sentences from | sentence accuracy | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    results = {'classifier': {'slot_accuracy': slot_acc.tolist(), 'tuple_accuracy': tuple_acc,
                              'wall_s': rc['wall_s'], 'iters': rc['iters']}, 'rows': []}
    for name, r, sents, _ in rows:
        acc = float(np.mean([s in refs for s, refs in zip(sents, test_refs)]))
        b = bleu_scores(sents, test_refs)
        lines.append('| %s | %.1f%% | %s |' % (name, 100 * acc, ' | '.join('%.1f' % (100 * x) for x in b)))
        results['rows'].append({'name': name, 'sentence_accuracy': acc, 'bleu': b})
        log('  %s: acc %.3f BLEU-4 %.3f' % (name, acc, b[3]))
    ex_rows = [r for r in rows if 'predicted tuple, beam %d' % args.beam in r[0]][:1]
    examples = []
    for i in range(8):
        examples.append('| %s | %s | %s | %s |' % (
            test_refs[i][0], ' / '.join(vd.VERBS[v] if k == 1 else ' '.join(vd.ENTITIES[v])
                                        for k, v in enumerate(pred[i])),
            ex_rows[0][2][i] if ex_rows else '', nn_sent[i]))
    d = decoders
    body = []
    from lrcn_caption_experiment import _machine
    body.append('Regenerated by `python tools/lrcn_video_description_experiment.py` (run from the '
                'repository root; data from `minicaffe data video_description`). Total wall time '
                'of this run: %.1f min on %s.' % (total / 60, _machine()))
    body.append('**Data** (`minicaffe/lrcn/datasets/video_description.py`, seed %d): %d training, %d '
                'validation and %d test clips of %d RGB frames of %dx%d pixels; a subject (6 entities: '
                'coloured shapes) acts on an object (another entity) with one of 5 verbs (approach, '
                'leave, jump over, push, circle), visible only in the motion (approach and leave are '
                'time-reversals of each other). Two reference sentences per clip ("the red circle jumps '
                'over the blue square" / "... leaps over ..."), vocabulary %d words + EOS.' % (
                    meta['seed'], meta['splits']['train']['clips'], meta['splits']['val']['clips'],
                    meta['splits']['test']['clips'], meta['frames'], meta['size'], meta['size'],
                    meta['vocab_size']))
    body.append('**Nets** (`prototxt/lrcn/video_description/`): the paper\'s third setting, the '
                'sentence generated from higher-level labels. `svo_classifier.prototxt`: a CNN over '
                'the clip (frames stacked in channels) with one softmax per slot, in place of the '
                'paper\'s CRF (%d iterations, %.0f s wall / %.0f s CPU). `svo_decoder.prototxt`: Embed + '
                'LSTM with the 17-d one-hot tuple as static input, trained on ground-truth tuples (%d '
                'iterations; %.0f s and %.0f s wall for the two variants); '
                '`svo_word_to_preds.deploy.prototxt` generates word by word through '
                '`minicaffe.lrcn.captioner` (beam search; beam 1 = greedy).' % (
                    rc['iters'], rc['wall_s'], rc['cpu_s'], list(d.values())[0]['iters'],
                    list(d.values())[0]['wall_s'], list(d.values())[1]['wall_s']))
    body.append('Classifier accuracy on the %d test clips: subject %.1f%%, verb %.1f%%, object %.1f%%, '
                'whole tuple %.1f%% (nearest-neighbour clip: tuple %.1f%%).' % (
                    len(test_clips), 100 * slot_acc[0], 100 * slot_acc[1], 100 * slot_acc[2],
                    100 * tuple_acc, 100 * rows[0][3]))
    body.append('Sentence accuracy = generated sentence equal to one of the references; BLEU as in '
                'the captioning section (`minicaffe/lrcn/bleu.py`, corpus level, percent).\n\n' + '\n'.join(lines))
    body.append('Examples (test clips, decoder 1 layer fed the predicted tuple, beam %d):\n\n'
                '| reference | predicted tuple | generated | nearest neighbour |\n| --- | --- | --- | --- |\n'
                % args.beam + '\n'.join(examples))
    body.append('**GPU-size settings** (paper, TACoS multilevel): CRF tuple predictions from '
                'visual classifiers, 1000-unit LSTMs, vocabulary of the TACoS sentences; not '
                'reproducible offline here.')
    if not args.no_docs:
        from lrcn_results_doc import replace_section
        replace_section(args.docs, '## Video description', '\n\n'.join(body))
        log('wrote %s' % args.docs)
    os.makedirs('runs/lrcn_video_description', exist_ok=True)
    with open('runs/lrcn_video_description/results.json', 'w') as f:
        json.dump(results, f, indent=1)
    return 0


def _nearest(train_x, test_x):
    a = train_x.reshape(len(train_x), -1).astype(np.float64)
    b = test_x.reshape(len(test_x), -1).astype(np.float64)
    d = (b ** 2).sum(1)[:, None] - 2 * b @ a.T + (a ** 2).sum(1)[None]
    return d.argmin(axis=1)


if __name__ == '__main__':
    raise SystemExit(main())
