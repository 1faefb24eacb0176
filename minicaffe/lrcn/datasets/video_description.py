"""Generated video clips with subject / verb / object labels and sentences (LRCN's
third experiment: an LSTM decoder that turns a subject-verb-object tuple, predicted
from the clip by a classifier, into a sentence).

Each clip is ``frames`` (8) RGB frames of ``size`` x ``size`` (24) pixels: a
subject object acts on a second object ("the red circle jumps over the blue
square").  Entities (6): red circle, blue square, green triangle, yellow
cross, white circle, purple square; subject != object.  Verbs (5), each with
two paraphrases used as references (training uses one, drawn at random):

  approach   "the S approaches the O" / "the S moves toward the O"
  leave      "the S moves away from the O" / "the S leaves the O"
  jump over  "the S jumps over the O" / "the S leaps over the O"
  push       "the S pushes the O" / "the S shoves the O"   (O moves after contact)
  circle     "the S circles around the O" / "the S goes around the O"

Directions, speeds, positions, backgrounds and colours are random (seeded),
so the verb is only visible in the motion: approach and leave are the same
frames in reverse order, approach and push differ in the second half.

Written under ``out_dir`` (default ``data/video_description``) per split
(train, val, test):
  ``{split}_clips.h5``: ``clip`` (n, frames*3, size, size) uint8, frames
  stacked in channels (frame-major: channels 3t..3t+2 = frame t), ``subject``,
  ``verb``, ``object`` (n,) labels, ``svo`` (n, 17) one-hot tuple
  [subject 6 | verb 5 | object 6]; ``{split}_clips.txt`` (HDF5Data list).
  ``{split}_svo_pairs.h5`` (``svo`` per stream) and ``{split}_sentences.h5``
  (cont_sentence, input_sentence, target_sentence) in LRCN's layout
  (see minicaffe/lrcn/datasets/captions.py: (batches x T, N), EOS 0, -1 padding),
  with their ``.txt`` lists; ``{split}_captions.json`` (references per clip).
  ``vocabulary.txt`` (fixed word list + <unk>: 26 words, nets use 27 outputs)
  and ``meta.json``.
"""
import json
import math
import os

import numpy as np

from ...commands.progress import progress
from .captions import UNK, _draw_object, _h5, batch_major, encode, lrcn_streams, save_vocabulary

ENTITIES = [('red', 'circle'), ('blue', 'square'), ('green', 'triangle'), ('yellow', 'cross'),
            ('white', 'circle'), ('purple', 'square')]
ENTITY_RGB = {'red': (220, 40, 40), 'blue': (50, 90, 235), 'green': (40, 190, 60),
              'yellow': (235, 220, 40), 'white': (235, 235, 235), 'purple': (170, 60, 200)}
VERBS = ['approach', 'leave', 'jump over', 'push', 'circle']
PARAPHRASES = {
    'approach': ['{s} approaches {o}', '{s} moves toward {o}'],
    'leave': ['{s} moves away from {o}', '{s} leaves {o}'],
    'jump over': ['{s} jumps over {o}', '{s} leaps over {o}'],
    'push': ['{s} pushes {o}', '{s} shoves {o}'],
    'circle': ['{s} circles around {o}', '{s} goes around {o}'],
}
SVO_DIM = len(ENTITIES) + len(VERBS) + len(ENTITIES)


def _words():
    w = set(['the'])
    for c, s in ENTITIES:
        w.update([c, s])
    for ps in PARAPHRASES.values():
        for p in ps:
            w.update(x for x in p.replace('{s}', '').replace('{o}', '').split())
    return sorted(w)


VOCAB = _words() + [UNK]


def sentences(subject, verb, obj):
    s = 'the %s %s' % ENTITIES[subject]
    o = 'the %s %s' % ENTITIES[obj]
    return [p.format(s=s, o=o) for p in PARAPHRASES[VERBS[verb]]]


def svo_onehot(subject, verb, obj):
    v = np.zeros(SVO_DIM, np.float32)
    v[subject] = 1
    v[len(ENTITIES) + verb] = 1
    v[len(ENTITIES) + len(VERBS) + obj] = 1
    return v


def _trajectory(verb, rs, size, frames, r):
    """(frames, 2, 2) centres of subject and object at each frame."""
    lo, hi = r + 0.5, size - r - 0.5
    s = np.linspace(0.0, 1.0, frames)
    for _ in range(1000):
        if verb in ('approach', 'leave'):
            o = rs.uniform(lo, hi, 2)
            th = rs.uniform(0, 2 * math.pi)
            d = np.array([math.cos(th), math.sin(th)])
            far, near = rs.uniform(0.6, 0.8) * size, 2 * r + 1
            dist = far + (near - far) * s if verb == 'approach' else near + (far - near) * s
            S = o[None] + dist[:, None] * d[None]
            O = np.repeat(o[None], frames, 0)
        elif verb == 'jump over':
            o = np.array([rs.uniform(0.4, 0.6) * size, rs.uniform(0.55, 0.75) * size])
            side = 1 if rs.random() < 0.5 else -1
            span = rs.uniform(0.3, 0.4) * size
            x = o[0] + side * span * (2 * s - 1)
            y = o[1] - rs.uniform(0.3, 0.45) * size * np.sin(math.pi * s)
            S = np.stack([x, y], 1)
            O = np.repeat(o[None], frames, 0)
        elif verb == 'push':
            th = rs.uniform(0, 2 * math.pi)
            d = np.array([math.cos(th), math.sin(th)])
            o0 = rs.uniform(lo, hi, 2)
            contact = 2 * r + 0.5
            start = rs.uniform(0.45, 0.6) * size
            half = frames // 2
            S, O = np.empty((frames, 2)), np.empty((frames, 2))
            for t in range(frames):
                if t <= half:
                    k = t / half
                    S[t] = o0 - (start + (contact - start) * k) * d
                    O[t] = o0
                else:
                    shift = (start - contact) / half * (t - half)
                    O[t] = o0 + shift * d
                    S[t] = O[t] - contact * d
        else:   # circle
            o = rs.uniform(0.42, 0.58, 2) * size
            R = rs.uniform(0.3, 0.36) * size
            phi0 = rs.uniform(0, 2 * math.pi)
            sense = 1 if rs.random() < 0.5 else -1
            phi = phi0 + sense * 2 * math.pi * 0.85 * s
            S = o[None] + R * np.stack([np.cos(phi), np.sin(phi)], 1)
            O = np.repeat(o[None], frames, 0)
        traj = np.stack([S, O], 1)
        if (traj >= lo).all() and (traj <= hi).all():
            return traj
    raise RuntimeError('could not place a %s clip' % verb)   # pragma: no cover


def render_clip(subject, verb, obj, rs, size=24, frames=8, scale=4):
    from PIL import Image, ImageDraw
    r = 0.12 * size
    traj = _trajectory(VERBS[verb], rs, size, frames, r)
    bg = tuple(int(v) for v in rs.integers(20, 70, 3))
    cols = []
    for e in (subject, obj):
        cols.append(tuple(int(np.clip(c + rs.integers(-20, 21), 0, 255))
                          for c in ENTITY_RGB[ENTITIES[e][0]]))
    out = np.empty((frames, 3, size, size), np.uint8)
    S = size * scale
    for t in range(frames):
        img = Image.new('RGB', (S, S), bg)
        draw = ImageDraw.Draw(img)
        # the object first, the subject on top (it jumps over / pushes the object)
        for k in (1, 0):
            e = obj if k == 1 else subject
            cx, cy = traj[t, k]
            _draw_object(draw, ENTITIES[e][1], cols[k], cx * scale, cy * scale, r * scale)
        arr = np.asarray(img.resize((size, size), Image.BOX), np.float32)
        arr = arr + rs.normal(0, 5, arr.shape)
        out[t] = np.clip(arr, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out.reshape(frames * 3, size, size)


def generate(n, seed=1701, size=24, frames=8, desc='clips'):
    """n clips: (clips uint8 (n, frames*3, size, size), labels (n, 3) int, references)."""
    rs = np.random.default_rng(seed)
    clips = np.empty((n, frames * 3, size, size), np.uint8)
    labels = np.empty((n, 3), np.int64)
    refs = []
    for i in progress(range(n), total=n, desc=desc):
        s = int(rs.integers(len(ENTITIES)))
        o = int(rs.integers(len(ENTITIES) - 1))
        o = o + 1 if o >= s else o
        v = int(rs.integers(len(VERBS)))
        clips[i] = render_clip(s, v, o, rs, size, frames)
        labels[i] = (s, v, o)
        refs.append(sentences(s, v, o))
    return clips, labels, refs


def write_split(folder, split, clips, labels, refs, T, N, rs):
    index = {w: i for i, w in enumerate(VOCAB)}
    p = lambda name: os.path.join(folder, name)   # noqa: E731
    svo = np.stack([svo_onehot(*l) for l in labels]) if len(labels) else np.zeros((0, SVO_DIM))
    _h5(p('%s_clips.h5' % split), clip=clips, subject=labels[:, 0].astype(np.float32),
        verb=labels[:, 1].astype(np.float32), object=labels[:, 2].astype(np.float32), svo=svo)
    # one sentence per clip (a random paraphrase), streams aligned with the svo rows
    order = rs.permutation(len(refs))
    n = max(N, (len(order) // N) * N)
    order = np.resize(order, n)
    chosen = [refs[k][int(rs.integers(len(refs[k])))] for k in order]
    cont, inp, tgt = lrcn_streams([encode(s.split(), index) for s in chosen], T)
    _h5(p('%s_svo_pairs.h5' % split), svo=svo[order])
    _h5(p('%s_sentences.h5' % split), cont_sentence=batch_major(cont, N),
        input_sentence=batch_major(inp, N), target_sentence=batch_major(tgt, N))
    for name in ('clips', 'svo_pairs', 'sentences'):
        with open(p('%s_%s.txt' % (split, name)), 'w') as f:
            f.write(p('%s_%s.h5' % (split, name)) + '\n')
    with open(p('%s_captions.json' % split), 'w') as f:
        json.dump([{'clip': i, 'svo': [int(x) for x in labels[i]], 'references': r}
                   for i, r in enumerate(refs)], f, indent=0)
    return {'clips': len(refs), 'pairs': int(n), 'batches': int(n // N)}


def prepare(out_dir='data/video_description', n_train=3000, n_val=300, n_test=500, size=24,
            frames=8, T=10, N=50, seed=1701):
    os.makedirs(out_dir, exist_ok=True)
    save_vocabulary(os.path.join(out_dir, 'vocabulary.txt'), VOCAB)
    counts = {}
    for k, (split, n) in enumerate((('train', n_train), ('val', n_val), ('test', n_test))):
        clips, labels, refs = generate(n, seed * 10 + k, size, frames, desc='clips ' + split)
        counts[split] = write_split(out_dir, split, clips, labels, refs, T, N,
                                    np.random.default_rng(seed + 100 + k))
    meta = {'frames': frames, 'size': size, 'T': T, 'N': N, 'seed': seed, 'vocab_size': len(VOCAB),
            'svo_dim': SVO_DIM, 'entities': [' '.join(e) for e in ENTITIES], 'verbs': VERBS,
            'splits': counts,
            'preprocess': 'uint8 RGB x / 255 - 0.5 (Power layer in the classifier nets)'}
    with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


def add_arguments(parser):
    parser.add_argument('--out', default='data/video_description', help='output folder')
    parser.add_argument('--seed', type=int, default=1701, help='random seed of the clips')
    parser.add_argument('--train', type=int, default=3000, help='training clips')
    parser.add_argument('--val', type=int, default=300, help='validation clips')
    parser.add_argument('--test', type=int, default=500, help='test clips')
    parser.add_argument('--size', type=int, default=24, help='frame side in pixels')
    parser.add_argument('--frames', type=int, default=8, help='frames per clip')
    parser.add_argument('--timesteps', type=int, default=10, help='T: words per stream incl. EOS')
    parser.add_argument('--streams', type=int, default=50, help='N: streams per batch')


def run(args):
    meta = prepare(args.out, args.train, args.val, args.test, args.size, args.frames,
                   args.timesteps, args.streams, args.seed)
    print('video description: %s' % json.dumps(meta['splits']))
    return 0
