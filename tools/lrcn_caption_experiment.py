#!/usr/bin/env python
"""LRCN image captioning experiment: regenerates the "## Image captioning" section
of docs/lrcn_results.md.

Run from the repository root (OMP_NUM_THREADS=2 for the shipped timing):

    python tools/lrcn_caption_experiment.py            # shipped size, ~25 min on 2 cores
    python tools/lrcn_caption_experiment.py --iters 50 --test-images 40 --no-docs   # smoke run

Steps: prepare data/captions (if missing), train the LSTM language model and the
three LRCN variants of prototxt/lrcn/caption/lrcn.prototxt with their shipped solvers
(factored 2-layer, unfactored 1-layer, unfactored 2-layer), caption the test scenes
with the deploy nets (beam 1 = greedy and beam 3), score corpus BLEU-1..4
(minicaffe.lrcn.bleu) against the three references of each image, and compare with
nearest-neighbour baselines (the first reference caption of the training image
nearest in pixels, or in the trained CNN's fc8 feature).  Then the same on the
tuxpaint stamps (factored 2-layer) when that set was prepared.
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
from minicaffe.lrcn.captioner import Captioner, caption_grid  # noqa: E402
from minicaffe.lrcn.datasets import captions as capdata  # noqa: E402

CAP = 'prototxt/lrcn/caption'
VARIANTS = [  # (key, label, solver, stages)
    ('lrcn_2f', 'LRCN factored, 2 layers', 'lrcn_solver.prototxt', ['factored', '2-layer']),
    ('lrcn_1u', 'LRCN unfactored, 1 layer', 'lrcn_solver.single_layer.prototxt', ['unfactored']),
    ('lrcn_2u', 'LRCN unfactored, 2 layers', 'lrcn_solver.unfactored.prototxt',
     ['unfactored', '2-layer']),
]


from lrcn_results_doc import replace_section  # noqa: E402  (shared with the other LRCN scripts)


def val_scores(solver):
    """(word accuracy, loss) of the solver's current weights on its first test net,
    averaged over that net's test_iter batches."""
    net = solver.test_nets[0]
    net.share_with(solver.net)
    iters = solver.param.test_iter[0]
    acc = loss = 0.0
    for _ in range(iters):
        out = net.forward()
        acc += float(out['accuracy'])
        loss += float(out['cross_entropy_loss'])
    return acc / iters, loss / iters


def train(solver_path, iters, log):
    from minicaffe.solvers.solver import Solver, read_solver_param
    p = read_solver_param(solver_path)
    if iters:
        p.stepsize = max(1, int(p.stepsize * iters / p.max_iter))
        p.max_iter = iters
        p.test_interval = iters
    p.snapshot = 0
    t0, c0 = time.time(), time.process_time()
    s = Solver(p, logger=log)
    s.step(p.max_iter)
    train_loss = float(s.smoothed_loss)
    scores = {}
    if s.test_nets:
        acc, loss = val_scores(s)
        scores = {'val_accuracy': acc, 'val_loss': loss}
    wall, cpu = time.time() - t0, time.process_time() - c0
    os.makedirs(os.path.dirname(p.snapshot_prefix), exist_ok=True)
    weights = p.snapshot_prefix + '_final.caffemodel'
    s.net.save(weights)
    return dict(scores, train_loss=train_loss / 20, wall_s=wall, cpu_s=cpu, iters=int(p.max_iter),
                weights=weights)


def load_split(folder, split, limit=None):
    with h5py.File(os.path.join(folder, '%s_images.h5' % split), 'r') as f:
        images = f['data'][:limit] if limit else f['data'][:]
    # BLEU on tokenized, lower-cased words (punctuation dropped), as the generated captions
    refs = [[' '.join(capdata.tokenize(s)) for s in r['references']]
            for r in json.load(open(os.path.join(folder, '%s_captions.json' % split)))]
    return images.astype(np.float32), refs[:len(images)]


def nearest(train_x, test_x, cosine=False):
    a = train_x.reshape(len(train_x), -1).astype(np.float64)
    b = test_x.reshape(len(test_x), -1).astype(np.float64)
    if cosine:
        a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
        b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
        return (b @ a.T).argmax(axis=1)
    d = (b ** 2).sum(1)[:, None] - 2 * b @ a.T + (a ** 2).sum(1)[None]
    return d.argmin(axis=1)


def fmt_bleu(b):
    return ' | '.join('%.1f' % (100 * x) for x in b)


def caption_set(folder, variants, args, log, word_net, image_net, results, examples_png=None):
    """Train variants on one caption set, caption its test images, BLEU vs NN baselines."""
    vocab_path = os.path.join(folder, 'vocabulary.txt')
    test_x, test_refs = load_split(folder, 'test', args.test_images)
    train_x, train_refs = load_split(folder, 'train')
    rows, gens = [], {}
    # nearest-neighbour baseline in pixels
    nn = nearest(train_x, test_x)
    gens['nn_pixels'] = [train_refs[i][0] for i in nn]
    rows.append(('Nearest neighbour (pixels)', '-', bleu_scores(gens['nn_pixels'], test_refs), None))
    feat_nn_done = False
    for key, label, solver, stages in variants:
        log('=== %s (%s)' % (label, solver))
        r = train(solver, args.iters, _progress(log, args.verbose))
        log('  trained %d iterations in %.0f s, val loss %s' % (r['iters'], r['wall_s'],
                                                                 r.get('val_loss')))
        if key == 'lstm_lm':
            cap = Captioner(r['weights'], os.path.join(CAP, 'lstm_lm.deploy.prototxt'), vocab_path)
            feats = None
        else:
            cap = Captioner(r['weights'], word_net, vocab_path, image_net, stages)
            feats = cap.compute_features(test_x)
        n = len(test_x)
        t0 = time.time()
        g = cap.beam_search(feats, 1, args.max_length, n=n)
        b3 = cap.beam_search(feats, args.beam, args.max_length, n=n)
        r['caption_s'] = time.time() - t0
        gens[key + '_greedy'] = [' '.join(cap.words(b[0][0])) for b in g]
        gens[key + '_beam'] = [' '.join(cap.words(b[0][0])) for b in b3]
        r['bleu_greedy'] = bleu_scores(gens[key + '_greedy'], test_refs)
        r['bleu_beam'] = bleu_scores(gens[key + '_beam'], test_refs)
        r['exact'] = float(np.mean([c in refs for c, refs in zip(gens[key + '_beam'], test_refs)]))
        results[key] = r
        rows.append((label + ', greedy (beam 1)', r, r['bleu_greedy'], r))
        rows.append((label + ', beam %d' % args.beam, r, r['bleu_beam'], r))
        if key != 'lstm_lm' and not feat_nn_done:
            tr_feats = cap.compute_features(train_x)
            nnf = nearest(tr_feats, feats, cosine=True)
            gens['nn_fc8'] = [train_refs[i][0] for i in nnf]
            rows.append(('Nearest neighbour (fc8 of %s)' % label, '-',
                         bleu_scores(gens['nn_fc8'], test_refs), None))
            feat_nn_done = True
        log('  BLEU-4 greedy %.3f beam %.3f' % (r['bleu_greedy'][3], r['bleu_beam'][3]))
    if examples_png:
        k = min(10, len(test_x))
        titles = []
        show = [v[0] for v in variants if v[0] != 'lstm_lm'][:1]
        caps = []
        for i in range(k):
            caps.append('%s: %s' % (show[0].replace('lrcn_', ''), gens[show[0] + '_beam'][i])
                        if show else gens['nn_pixels'][i])
            titles.append('ref: ' + test_refs[i][0])
        caption_grid(test_x[:k], caps, examples_png, columns=5, scale=4, titles=titles)
    return rows, gens, test_refs


def ranking(rows, beam):
    """One line ranking every row by BLEU-4 (beam rows and baselines)."""
    ranked = [(b[3], label) for label, r, b, _ in rows
              if r in ('-', None) or label.endswith('beam %d' % beam)]
    ranked.sort(key=lambda x: -x[0])
    return ('Ranking by BLEU-4 (LRCN and language model with beam %d): ' % beam
            + ' > '.join('%s %.1f' % (l.replace(', beam %d' % beam, ''), 100 * v) for v, l in ranked) + '.')


def table(rows):
    out = ['| model | iterations | train wall / CPU (s) | val loss/word | val word acc. | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for label, r, b, _ in rows:
        if r == '-' or r is None:
            out.append('| %s | – | – | – | – | %s |' % (label, fmt_bleu(b)))
        else:
            out.append('| %s | %d | %.0f / %.0f | %s | %s | %s |' % (
                label, r['iters'], r['wall_s'], r['cpu_s'],
                '%.3f' % r['val_loss'] if 'val_loss' in r else '–',
                '%.3f' % r['val_accuracy'] if 'val_accuracy' in r else '–', fmt_bleu(b)))
    return '\n'.join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='data/captions')
    ap.add_argument('--iters', type=int, default=None, help='override max_iter of every solver')
    ap.add_argument('--test-images', type=int, default=None, help='caption only the first N test images')
    ap.add_argument('--beam', type=int, default=3)
    ap.add_argument('--max-length', type=int, default=20)
    ap.add_argument('--no-tuxpaint', action='store_true')
    ap.add_argument('--docs', default='docs/lrcn_results.md')
    ap.add_argument('--no-docs', action='store_true')
    ap.add_argument('--verbose', action='store_true')
    args = ap.parse_args(argv)
    t_all = time.time()

    def log(m):
        print(m, flush=True)

    scenes = os.path.join(args.data, 'scenes')
    if not os.path.exists(os.path.join(scenes, 'meta.json')):
        capdata.prepare(args.data, log=log)
    results = {}
    variants = [('lstm_lm', 'LSTM language model (no image)', os.path.join(CAP, 'lstm_lm_solver.prototxt'), [])]
    variants += [(k, l, os.path.join(CAP, s), st) for k, l, s, st in VARIANTS]
    png = os.path.join(os.path.dirname(args.docs), 'lrcn_caption_examples.png') if not args.no_docs else None
    rows, gens, refs = caption_set(scenes, variants, args, log,
                                   os.path.join(CAP, 'lrcn_word_to_preds.deploy.prototxt'),
                                   os.path.join(CAP, 'image_to_feature.deploy.prototxt'), results, png)
    tux_rows = None
    tux = os.path.join(args.data, 'tuxpaint')
    tux_note = ''
    if not args.no_tuxpaint and os.path.exists(os.path.join(tux, 'meta.json')):
        tv = [('lrcn_2f', 'LRCN factored, 2 layers',
               os.path.join(CAP, 'tuxpaint', 'lrcn_solver.prototxt'), ['factored', '2-layer'])]
        tres = {}
        targs = argparse.Namespace(**vars(args))
        targs.test_images = None
        targs.iters = max(1, args.iters // 2) if args.iters else None
        tux_rows, tgens, trefs = caption_set(tux, tv, targs, log,
                                             os.path.join(CAP, 'tuxpaint', 'lrcn_word_to_preds.deploy.prototxt'),
                                             os.path.join(CAP, 'image_to_feature.deploy.prototxt'), tres)
        tux_examples = [(trefs[i][0], tgens['lrcn_2f_beam'][i], tgens['nn_pixels'][i]) for i in range(8)]
        results['tuxpaint'] = tres
    elif not args.no_tuxpaint:
        tux_note = ('The tuxpaint set was not prepared (`apt-get install tuxpaint-stamps-default`, then '
                    '`minicaffe data captions`), so only the generated scenes are reported.')
    total = time.time() - t_all
    log('total wall time %.0f s' % total)

    meta = json.load(open(os.path.join(scenes, 'meta.json')))
    ex = []
    for i in range(8):
        ex.append('| %s | %s | %s | %s |' % (refs[i][0], gens['nn_pixels'][i],
                                            gens['lrcn_2f_beam'][i], gens['lrcn_1u_beam'][i]))
    body = []
    body.append('Regenerated by `python tools/lrcn_caption_experiment.py` (run from the repository '
                'root; data from `minicaffe data captions`). Total wall time of this run: %.1f min on '
                '%s; when the machine is shared with other jobs, wall seconds overstate the cost, so '
                'the table gives CPU seconds (process time, all threads) beside them.' % (total / 60, _machine()))
    body.append('**Data.** Generated scenes (`minicaffe/lrcn/datasets/captions.py`, seed %d): %d training, '
                '%d validation and %d test images of %dx%d pixels, one or two objects (4 shapes, 6 '
                'colours, 2 sizes) in a relation (above, below, left of, right of), three reference '
                'sentences per image (15000 training image-sentence pairs), vocabulary of %d words + '
                'EOS, T = %d, N = %d streams. BLEU is scored on the first %d test images.' % (
                    meta['seed'], meta['splits']['train']['images'], meta['splits']['val']['images'],
                    meta['splits']['test']['images'], meta['image_size'], meta['image_size'],
                    meta['vocab_size'], meta['T'], meta['N'], len(refs)))
    body.append('**Nets** (`prototxt/lrcn/caption/`): `lrcn.prototxt` with upstream\'s stages '
                '(a 3-conv CNN trained from scratch, fc8 = 64-d image feature, 128-unit LSTMs, '
                'loss weight 20, SGD with upstream\'s lr 0.01 / momentum 0.9 / clip 10, '
                'lr halved half-way), the LSTM language model (`lstm_language_model.prototxt`, '
                'lr 0.1, dropout stages on), and the deploy nets `image_to_feature.deploy.prototxt` + '
                '`lrcn_word_to_preds.deploy.prototxt` used by `minicaffe caption` for generation '
                '(carried LSTM state, one word per forward call). Upstream\'s `factored` stage '
                'exists only with 2 layers (with 1 layer the LSTM would never see the image), so '
                'the factored/unfactored x 1/2-layer grid has three cells, as in upstream\'s solvers.')
    body.append('**BLEU**: our own corpus-level BLEU-1..4 (`minicaffe/lrcn/bleu.py`: Papineni et al., '
                'clipped n-gram precision pooled over the corpus, brevity penalty with the closest '
                'reference length, uniform weights, no smoothing), in percent. '
                '"exact" = generated sentence equal to one of the references.')
    body.append(table(rows))
    body.append(ranking(rows, args.beam) + ' These nets stop at the shipped 2000 iterations, far '
                'from convergence; trained until the val loss stops improving, LRCN beats the '
                'nearest neighbour (next section, `tools/lrcn_caption_convergence.py`).')
    body.append('Exact-sentence rate (beam %d): %s.' % (args.beam, ', '.join(
        '%s %.1f%%' % (k, 100 * results[k]['exact']) for k in ('lstm_lm', 'lrcn_2f', 'lrcn_1u', 'lrcn_2u'))))
    body.append('Example captions (test images, beam %d; "ref" is the first of the three '
                'references):\n\n| reference | nearest neighbour (pixels) | LRCN factored 2-layer | '
                'LRCN unfactored 1-layer |\n| --- | --- | --- | --- |\n' % args.beam + '\n'.join(ex))
    if png:
        body.append('![captioned test scenes](lrcn_caption_examples.png)')
    if tux_rows:
        tm = json.load(open(os.path.join(tux, 'meta.json')))
        body.append('### Tuxpaint stamps\n\nReal captioned images: the %d stamps of Debian\'s '
                    '`tuxpaint-stamps-default` with their English captions, split by stamp '
                    '(%d train stamps rendered %d times with random scale/offset/background, %d '
                    'val, %d test, unseen objects), vocabulary = 299 most frequent training words '
                    '+ `<unk>`. Most captions name one object ("A frog.", "The letter q."), '
                    'so a test stamp\'s noun is usually one never seen in training: this set '
                    'measures how far the model gets with little data, not object naming.' % (
                        tm['stamps'], tm['splits']['train']['images'] // tm['augment'], tm['augment'],
                        tm['splits']['val']['images'], tm['splits']['test']['images']))
        body.append(table(tux_rows))
        body.append('| reference | LRCN factored 2-layer (beam %d) | nearest neighbour (pixels) |\n'
                    '| --- | --- | --- |\n' % args.beam + '\n'.join('| %s | %s | %s |' % e for e in tux_examples))
    elif tux_note:
        body.append(tux_note)
    body.append('**GPU-size settings** (upstream, for a real run on COCO): CaffeNet/VGG CNN '
                '(fc8 1000-d) on 227x227 crops, 1000-unit LSTMs, embedding 1000, vocabulary 8800 '
                'words, T = 20, N = 100, 110000 iterations (lr 0.01 halved every 20000), '
                '`freeze-convnet` first, then fine-tuning the whole net.')
    if not args.no_docs:
        replace_section(args.docs, '## Image captioning', '\n\n'.join(body))
        log('wrote %s' % args.docs)
    with open('runs/lrcn_caption/results.json', 'w') as f:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != 'weights'} if isinstance(v, dict) else v
                   for k, v in results.items()}, f, indent=1, default=str)
    return 0


def _progress(log, verbose):
    """Solver log lines: all with --verbose, else the loss line every 200 iterations."""
    def f(m):
        if verbose:
            log('  ' + m)
        elif m.startswith('Iteration ') and 'loss =' in m:
            try:
                it = int(m.split()[1])
            except ValueError:
                return
            if it % 200 == 0:
                log('  ' + m)
    return f


def _machine():
    n = os.environ.get('OMP_NUM_THREADS', 'unset')
    try:
        load = ', load average %.1f at the end' % os.getloadavg()[0]
    except OSError:
        load = ''
    return '%s CPU cores (OMP_NUM_THREADS=%s%s)' % (os.cpu_count(), n, load)


if __name__ == '__main__':
    raise SystemExit(main())
