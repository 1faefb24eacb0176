"""Captioned images for the LRCN captioning nets, written in LRCN's HDF5 layout.

Two sets, each in its own folder under ``out_dir`` (default ``data/captions``):

``scenes/``   generated, seeded scenes: one or two objects (square, circle,
              triangle, cross) with a colour and a size, placed so that their
              relation (above, below, to the left of, to the right of) is
              unambiguous, drawn at 4x and downsampled to ``size`` x ``size``
              (32 by default) on a noisy dark background.  Each image has three
              reference sentences ("a small red square above a large blue
              circle", the same scene stated from the other object, "a red
              square and a blue circle"); "large" and "big" alternate.  The
              vocabulary is the grammar's fixed word list (24 words + <unk>),
              so the shipped nets (input_dim / num_output 26) fit any seed.
              ``--split random`` (default) draws the three splits alike, so
              many test scenes repeat a training scene (copying a neighbour's
              caption is then nearly optimal); ``--split compositional`` keeps
              a seeded fraction (``--heldout-pairs``, default 0.25) of the
              pairs of object types (shape + colour) out of training, and makes
              every val/test image a two-object scene of a held-out pair (val
              and test pairs disjoint): new combinations of seen words.
``tuxpaint/`` the 785 stamps of Debian's ``tuxpaint-stamps-default`` (PNG +
              the first line of the .txt beside it, the English caption), when
              installed (``apt-get install tuxpaint-stamps-default``) or found
              with ``--tuxpaint-dir``.  Stamps are split by stamp (seeded);
              each training stamp is rendered ``--tuxpaint-augment`` times
              (random scale, offset, light background), val/test stamps once,
              centred.  Vocabulary: the 299 most frequent training words
              (ties alphabetical) + <unk>, padded with <unused-k> to exactly
              300 words so the shipped nets (301 outputs) always fit.
              Missing package: a clear message, and the scene set is still
              written.

Layout (LRCN's coco_to_hdf5_data.py / hdf5_sequence_generator.py): words are
vocabulary index + 1, 0 is EOS; a sentence of L words padded to T steps is
``cont_sentence  = [0, 1 x L, 0 x pad]``,
``input_sentence = [0, w_1..w_L, -1 x pad]``,
``target_sentence = [w_1..w_L, 0, -1 x pad]`` (truncated to T), and the
sentence files hold (batches x T, N) arrays: rows are timesteps, columns are
the N parallel streams, so an HDF5Data layer with ``batch_size: T`` reads one
T x N batch.  The image file of the same split holds, in the same order, the
image of each stream (rows = pairs, uint8 C x H x W; the nets scale it by
1/255 and subtract 0.5 with a Power layer), so an HDF5Data with
``batch_size: N`` stays aligned with the sentences (both files hold a whole
number of batches; pairs are shuffled once, at writing).

Per split (train, val, test) in each set's folder:
  ``{split}_pair_images.h5`` (data), ``{split}_sentences.h5``
  (cont_sentence, input_sentence, target_sentence), ``{split}_pair_images.txt``
  and ``{split}_sentences.txt`` (HDF5Data source lists),
  ``{split}_images.h5`` (data: each image once, for captioning and BLEU),
  ``{split}_captions.json`` (the reference sentences of each image).
Plus ``vocabulary.txt`` (one word a line, without EOS, as LRCN's) and
``meta.json`` (image size, preprocessing, T, N, counts, seed).
"""
import json
import os
import re

import h5py
import numpy as np

from ...errors import DataSourceError
from ...commands.progress import progress

UNK = '<unk>'
TUXPAINT_DIR = '/usr/share/tuxpaint/stamps'
TUXPAINT_HINT = ('the tuxpaint stamps come from the Debian package tuxpaint-stamps-default: run '
                 '`apt-get install tuxpaint-stamps-default` (or pass --tuxpaint-dir DIR)')

# ------------------------------------------------------------------ vocabulary
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(sentence):
    """Lower-case words; punctuation dropped (as LRCN's split_sentence)."""
    return _TOKEN.findall(sentence.lower().replace('\u2019', "'"))


def load_vocabulary(path):
    with open(path, encoding='utf-8') as f:
        return [w.rstrip('\n') for w in f if w.rstrip('\n')]


def save_vocabulary(path, words):
    with open(path, 'w', encoding='utf-8') as f:
        for w in words:
            f.write(w + '\n')


def encode(words, vocab_index):
    """Words -> stream indices (vocabulary index + 1; unknown words -> <unk>)."""
    unk = vocab_index.get(UNK)
    out = []
    for w in words:
        i = vocab_index.get(w, unk)
        if i is None:
            raise ValueError('word "%s" is not in the vocabulary and it has no %s' % (w, UNK))
        out.append(i + 1)
    return out


def decode(indices, vocab):
    """Stream indices -> words, stopping at EOS (0)."""
    words = []
    for i in indices:
        i = int(i)
        if i == 0:
            break
        words.append(vocab[i - 1])
    return words


def lrcn_streams(encoded, T):
    """LRCN's cont/input/target streams, (T, n) each, for n encoded sentences."""
    n = len(encoded)
    cont = np.zeros((T, n), np.float32)
    inp = np.full((T, n), -1, np.float32)
    tgt = np.full((T, n), -1, np.float32)
    for j, s in enumerate(encoded):
        s = list(s)
        c = ([0] + [1] * len(s))[:T]
        i = ([0] + s)[:T]
        t = (s + [0])[:T]
        cont[:len(c), j] = c
        inp[:len(i), j] = i
        tgt[:len(t), j] = t
    return cont, inp, tgt


def batch_major(streams, N):
    """(T, n) with n = B*N -> (B*T, N): batch b's T rows hold streams b*N..b*N+N-1."""
    T, n = streams.shape
    assert n % N == 0, (n, N)
    B = n // N
    return streams.reshape(T, B, N).transpose(1, 0, 2).reshape(B * T, N)


def unbatch(rows, T):
    """Inverse of batch_major: (B*T, N) -> (T, B*N)."""
    BT, N = rows.shape
    B = BT // T
    return rows.reshape(B, T, N).transpose(1, 0, 2).reshape(T, B * N)


# ------------------------------------------------------------------ scenes
COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (50, 90, 235),
           'yellow': (235, 220, 40), 'purple': (170, 60, 200), 'white': (235, 235, 235)}
SHAPES = ('square', 'circle', 'triangle', 'cross')
SIZES = ('small', 'large')
RELATIONS = {'above': 'below', 'below': 'above', 'to the left of': 'to the right of',
             'to the right of': 'to the left of'}
SCENE_WORDS = sorted(set(['a', 'there', 'is', 'and', 'small', 'large', 'big', 'to', 'the', 'left',
                          'right', 'of', 'above', 'below'] + list(COLOURS) + list(SHAPES)))
SCENE_VOCAB = SCENE_WORDS + [UNK]
SCENE_SPLITS = ('random', 'compositional')


def _draw_object(draw, shape, colour, cx, cy, r):
    if shape == 'square':
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == 'triangle':
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == 'cross':
        w = max(1, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def _phrase(obj, size_word, with_size=True):
    words = ['a']
    if with_size:
        words.append(size_word if obj['size'] == 'large' else 'small')
    words += [obj['colour'], obj['shape']]
    return ' '.join(words)


def scene_sentences(scene, rs):
    """Three reference sentences for a scene (dict with objects and relation)."""
    big = lambda: 'large' if rs.random() < 0.5 else 'big'   # noqa: E731
    objs = scene['objects']
    if len(objs) == 1:
        o = objs[0]
        return [_phrase(o, big()), 'there is ' + _phrase(o, big()), _phrase(o, big(), False)]
    a, b = objs
    rel = scene['relation']
    return ['%s %s %s' % (_phrase(a, big()), rel, _phrase(b, big())),
            '%s %s %s' % (_phrase(b, big()), RELATIONS[rel], _phrase(a, big())),
            '%s and %s' % (_phrase(a, big(), False), _phrase(b, big(), False))]


def _random_object(rs):
    return {'shape': SHAPES[rs.integers(len(SHAPES))],
            'colour': list(COLOURS)[rs.integers(len(COLOURS))],
            'size': SIZES[rs.integers(len(SIZES))]}


def _place(rs, objs, relation, size):
    """Centres and radii (in output pixels) for the objects of a scene."""
    radii = [size * (0.11 if o['size'] == 'small' else 0.2) for o in objs]
    for _ in range(1000):
        pos = []
        for r in radii:
            pos.append((rs.uniform(r + 1, size - r - 1), rs.uniform(r + 1, size - r - 1)))
        if len(objs) == 1:
            return pos, radii
        (xa, ya), (xb, yb) = pos
        ra, rb = radii
        gap = 1.0
        if relation in ('above', 'below'):
            top, bot = ((ya, ra), (yb, rb)) if relation == 'above' else ((yb, rb), (ya, ra))
            ok = top[0] + top[1] + gap < bot[0] - bot[1] and abs(xa - xb) < size * 0.25
        else:
            lft, rgt = ((xa, ra), (xb, rb)) if relation == 'to the left of' else ((xb, rb), (xa, ra))
            ok = lft[0] + lft[1] + gap < rgt[0] - rgt[1] and abs(ya - yb) < size * 0.25
        if ok:
            return pos, radii
    raise RuntimeError('could not place the objects')   # pragma: no cover


def render_scene(scene, size, rs, scale=4):
    """uint8 (3, size, size) image of a scene."""
    from PIL import Image, ImageDraw
    S = size * scale
    bg = tuple(int(v) for v in rs.integers(20, 70, 3))
    img = Image.new('RGB', (S, S), bg)
    draw = ImageDraw.Draw(img)
    for o, (cx, cy), r in zip(scene['objects'], scene['pos'], scene['radii']):
        col = tuple(int(np.clip(c + rs.integers(-20, 21), 0, 255)) for c in COLOURS[o['colour']])
        _draw_object(draw, o['shape'], col, cx * scale, cy * scale, r * scale)
    img = img.resize((size, size), Image.BOX)
    arr = np.asarray(img, np.float32) + rs.normal(0, 6, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def object_type(obj):
    """An object's (shape, colour): what the compositional split holds out in pairs."""
    return (obj['shape'], obj['colour'])


def object_types():
    return [(s, c) for s in SHAPES for c in COLOURS]


def type_pair(a, b):
    """The unordered pair of two objects' types (a scene's combination), in the order of
    ``object_types()`` as ``compositional_pairs`` holds them."""
    order = object_types()
    return tuple(sorted((object_type(a), object_type(b)), key=order.index))


def compositional_pairs(seed, heldout=0.25):
    """Split the unordered pairs of distinct object types (24 types: 276 pairs) for the
    compositional split: a seeded ``heldout`` fraction is never drawn in training,
    half of it (rounded down) is the val split's, the rest the test split's.
    Returns {'train': set, 'val': set, 'test': set}; every type keeps training
    partners (checked), so every word and every object phrase is seen in training."""
    types = object_types()
    pairs = [(types[i], types[j]) for i in range(len(types)) for j in range(i + 1, len(types))]
    rs = np.random.default_rng(seed + 7)
    order = rs.permutation(len(pairs))
    n_out = int(round(heldout * len(pairs)))
    n_val = n_out // 2
    val = {pairs[k] for k in order[:n_val]}
    test = {pairs[k] for k in order[n_val:n_out]}
    train = {pairs[k] for k in order[n_out:]}
    lonely = [t for t in types if not any(t in p for p in train)]
    if lonely or not val or not test:
        raise DataSourceError('compositional split: held-out fraction %g leaves %s; use a smaller '
                              '--heldout-pairs' % (heldout, 'types with no training partner: %s'
                                                   % lonely if lonely else 'an empty val or test set'))
    return {'train': train, 'val': val, 'test': test}


def _object_of_type(rs, shape_colour):
    return {'shape': shape_colour[0], 'colour': shape_colour[1], 'size': SIZES[rs.integers(len(SIZES))]}


def _pair_from(rs, pairs):
    """Two objects whose type pair is one of ``pairs`` (a sorted list), in random order."""
    ta, tb = pairs[rs.integers(len(pairs))]
    if rs.random() < 0.5:
        ta, tb = tb, ta
    return [_object_of_type(rs, ta), _object_of_type(rs, tb)]


def generate_scenes(n, seed=1701, size=32, two_object_fraction=0.7, desc='scenes', pairs=None):
    """n seeded scenes: (images uint8 (n, 3, size, size), references [[3 sentences]], scenes).

    ``pairs``: None (any two distinct object types, the default set) or a set of
    type pairs (``type_pair``) the two-object scenes are drawn from, uniformly."""
    rs = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), np.uint8)
    refs, scenes = [], []
    allowed = sorted(pairs) if pairs is not None else None
    for k in progress(range(n), total=n, desc=desc):
        if rs.random() < two_object_fraction:
            if allowed is None:
                a = _random_object(rs)
                while True:
                    b = _random_object(rs)
                    if (b['shape'], b['colour']) != (a['shape'], a['colour']):
                        break
                objs = [a, b]
            else:
                objs = _pair_from(rs, allowed)
            relation = list(RELATIONS)[rs.integers(len(RELATIONS))]
        else:
            objs, relation = [_random_object(rs)], None
        pos, radii = _place(rs, objs, relation, size)
        scene = {'objects': objs, 'relation': relation, 'pos': pos, 'radii': radii}
        images[k] = render_scene(scene, size, rs)
        refs.append(scene_sentences(scene, rs))
        scenes.append({'objects': objs, 'relation': relation})
    return images, refs, scenes


# ------------------------------------------------------------------ tuxpaint
def find_tuxpaint(directory=None):
    """[(png path, English caption)] of every stamp with a .txt, sorted by path."""
    directory = directory or TUXPAINT_DIR
    if not os.path.isdir(directory):
        raise DataSourceError('tuxpaint stamps folder %s not found; %s' % (directory, TUXPAINT_HINT))
    stamps = []
    for root, _, files in os.walk(directory):
        for f in files:
            if f.endswith('.png'):
                txt = os.path.join(root, f[:-4] + '.txt')
                if os.path.exists(txt):
                    with open(txt, encoding='utf-8', errors='replace') as fh:
                        caption = fh.readline().strip()
                    if tokenize(caption):
                        stamps.append((os.path.join(root, f), caption))
    if not stamps:
        raise DataSourceError('no captioned stamps (.png with a .txt) under %s; %s'
                              % (directory, TUXPAINT_HINT))
    return sorted(stamps)


def render_stamp(path, size, rs=None):
    """uint8 (3, size, size): the stamp on a light background, fitted (random
    scale/offset/background when rs is given, else centred on white)."""
    from PIL import Image
    im = Image.open(path).convert('RGBA')
    if rs is None:
        scale, bg = 0.9, (255, 255, 255)
    else:
        scale = rs.uniform(0.65, 1.0)
        bg = tuple(int(v) for v in rs.integers(200, 256, 3))
    side = max(1, int(round(size * 4 * scale)))
    w, h = im.size
    f = side / max(w, h)
    im = im.resize((max(1, int(w * f)), max(1, int(h * f))), Image.LANCZOS)
    canvas = Image.new('RGBA', (size * 4, size * 4), bg + (255,))
    free_x, free_y = size * 4 - im.size[0], size * 4 - im.size[1]
    if rs is None:
        ox, oy = free_x // 2, free_y // 2
    else:
        ox, oy = int(rs.integers(0, free_x + 1)), int(rs.integers(0, free_y + 1))
    canvas.alpha_composite(im, (ox, oy))
    out = canvas.convert('RGB').resize((size, size), Image.BOX)
    return np.asarray(out, np.uint8).transpose(2, 0, 1).copy()


def tuxpaint_vocabulary(sentences, size=300):
    counts = {}
    for s in sentences:
        for w in tokenize(s):
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[:size - 1]
    words.append(UNK)
    k = 0
    while len(words) < size:
        words.append('<unused-%d>' % k)
        k += 1
    return words


# ------------------------------------------------------------------ writing
def _h5(path, **arrays):
    tmp = path + '.tmp'
    with h5py.File(tmp, 'w') as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    os.replace(tmp, path)


def write_split(folder, split, images, refs, vocab, T, N, rs, captions_per_image=None):
    """Write one split: aligned pair files (whole batches), unique images, references."""
    index = {w: i for i, w in enumerate(vocab)}
    pairs = []
    for i, rr in enumerate(refs):
        for s in (rr if captions_per_image is None else rr[:captions_per_image]):
            pairs.append((i, s))
    order = rs.permutation(len(pairs))
    n = (len(pairs) // N) * N
    if n == 0:
        order = np.resize(order, N)      # tiny sets: repeat pairs to fill one batch
        n = N
    order = order[:n]
    img_idx = np.array([pairs[k][0] for k in order], np.int64)
    encoded = [encode(tokenize(pairs[k][1]), index) for k in order]
    cont, inp, tgt = lrcn_streams(encoded, T)
    p = lambda name: os.path.join(folder, name)   # noqa: E731
    _h5(p('%s_pair_images.h5' % split), data=images[img_idx])
    _h5(p('%s_sentences.h5' % split), cont_sentence=batch_major(cont, N),
        input_sentence=batch_major(inp, N), target_sentence=batch_major(tgt, N))
    _h5(p('%s_images.h5' % split), data=images)
    for name in ('pair_images', 'sentences'):
        with open(p('%s_%s.txt' % (split, name)), 'w') as f:
            f.write(p('%s_%s.h5' % (split, name)) + '\n')
    with open(p('%s_captions.json' % split), 'w') as f:
        json.dump([{'image': i, 'references': rr} for i, rr in enumerate(refs)], f, indent=0)
    return {'images': len(refs), 'pairs': int(n), 'batches': int(n // N)}


def _meta(folder, **kw):
    meta = {'channels': 3, 'preprocess': 'uint8 RGB pixels x / 255 - 0.5 (Power layer in the nets)'}
    meta.update(kw)
    with open(os.path.join(folder, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


def prepare_scenes(out_dir='data/captions', n_train=5000, n_val=300, n_test=500, size=32, T=16,
                   N=50, seed=1701, split='random', heldout_pairs=0.25):
    """The scene set.  ``split='random'``: the three splits drawn alike (test scenes
    often repeat a training scene's objects, so retrieval does well);
    ``'compositional'``: a held-out fraction of the object-type pairs
    (``compositional_pairs``) never appears in training, and every val/test image
    is a two-object scene of a held-out pair (val and test pairs disjoint)."""
    if split not in SCENE_SPLITS:
        raise DataSourceError('scene split must be one of %s, not %r' % (', '.join(SCENE_SPLITS), split))
    pair_sets = compositional_pairs(seed, heldout_pairs) if split == 'compositional' else None
    folder = os.path.join(out_dir, 'scenes')
    os.makedirs(folder, exist_ok=True)
    save_vocabulary(os.path.join(folder, 'vocabulary.txt'), SCENE_VOCAB)
    counts = {}
    for k, (split_name, n) in enumerate((('train', n_train), ('val', n_val), ('test', n_test))):
        kw = {}
        if pair_sets is not None:
            kw = {'pairs': pair_sets[split_name]}
            if split_name != 'train':
                kw['two_object_fraction'] = 1.0
        images, refs, _ = generate_scenes(n, seed=seed * 10 + k, size=size, desc='scenes ' + split_name,
                                          **kw)
        counts[split_name] = write_split(folder, split_name, images, refs, SCENE_VOCAB, T, N,
                                         np.random.default_rng(seed + 100 + k))
    extra = {}
    if pair_sets is not None:
        extra = {'heldout_pairs': heldout_pairs,
                 'pairs': {k: sorted(' + '.join(' '.join(t[::-1]) for t in p) for p in v)
                           for k, v in pair_sets.items() if k != 'train'}}
    return _meta(folder, set='scenes', split=split, image_size=size, T=T, N=N, seed=seed,
                 vocab_size=len(SCENE_VOCAB), splits=counts, **extra)


def prepare_tuxpaint(out_dir='data/captions', tuxpaint_dir=None, n_val=40, n_test=85, augment=8,
                     size=32, T=16, N=50, seed=1701):
    stamps = find_tuxpaint(tuxpaint_dir)
    folder = os.path.join(out_dir, 'tuxpaint')
    os.makedirs(folder, exist_ok=True)
    rs = np.random.default_rng(seed)
    perm = rs.permutation(len(stamps))
    test_ids, val_ids, train_ids = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    vocab = tuxpaint_vocabulary([stamps[i][1] for i in train_ids])
    save_vocabulary(os.path.join(folder, 'vocabulary.txt'), vocab)
    counts = {}
    splits = (('train', train_ids, augment), ('val', val_ids, 1), ('test', test_ids, 1))
    for k, (split, ids, aug) in enumerate(splits):
        rsi = np.random.default_rng(seed * 10 + k)
        images = np.empty((len(ids) * aug, 3, size, size), np.uint8)
        refs, paths = [], []
        for j, i in enumerate(progress(list(ids), total=len(ids), desc='tuxpaint ' + split)):
            path, caption = stamps[i]
            for a in range(aug):
                images[j * aug + a] = render_stamp(path, size, rsi if split == 'train' else None)
                refs.append([caption])
                paths.append(path)
        counts[split] = write_split(folder, split, images, refs, vocab, T, N,
                                    np.random.default_rng(seed + 100 + k))
        with open(os.path.join(folder, '%s_stamps.txt' % split), 'w') as f:
            f.write('\n'.join(paths) + '\n')
    return _meta(folder, set='tuxpaint', image_size=size, T=T, N=N, seed=seed,
                 vocab_size=len(vocab), stamps=len(stamps), augment=augment, splits=counts)


def prepare(out_dir='data/captions', tuxpaint_dir=None, seed=1701, n_train=5000, n_val=300,
            n_test=500, size=32, T=16, N=50, augment=8, log=print, split='random', heldout_pairs=0.25):
    metas = {'scenes': prepare_scenes(out_dir, n_train, n_val, n_test, size, T, N, seed, split,
                                      heldout_pairs)}
    log('scenes: %s' % json.dumps(metas['scenes']['splits']))
    try:
        metas['tuxpaint'] = prepare_tuxpaint(out_dir, tuxpaint_dir, augment=augment, size=size,
                                             T=T, N=N, seed=seed)
        log('tuxpaint: %s' % json.dumps(metas['tuxpaint']['splits']))
    except DataSourceError as e:
        log('tuxpaint set skipped: %s' % e)
    return metas


# ------------------------------------------------------------------ command line
def add_arguments(parser):
    parser.add_argument('--out', default='data/captions', help='output folder (default data/captions)')
    parser.add_argument('--tuxpaint-dir', default=None,
                        help='tuxpaint stamps folder (default %s)' % TUXPAINT_DIR)
    parser.add_argument('--seed', type=int, default=1701, help='random seed of the generated scenes')
    parser.add_argument('--train', type=int, default=5000, help='generated training scenes')
    parser.add_argument('--val', type=int, default=300, help='generated validation scenes')
    parser.add_argument('--test', type=int, default=500, help='generated test scenes')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--timesteps', type=int, default=16, help='T: words per stream incl. EOS')
    parser.add_argument('--streams', type=int, default=50, help='N: streams (images) per batch')
    parser.add_argument('--tuxpaint-augment', type=int, default=8,
                        help='renderings of each training stamp')
    parser.add_argument('--split', choices=SCENE_SPLITS, default='random',
                        help='scenes: "random" (train/val/test drawn alike) or "compositional" '
                             '(val/test scenes pair object types never paired in training); '
                             'default random')
    parser.add_argument('--heldout-pairs', type=float, default=0.25,
                        help='compositional split: fraction of the 276 object-type pairs kept out of '
                             'training, half for val, half for test (default 0.25)')


def run(args):
    prepare(args.out, args.tuxpaint_dir, args.seed, args.train, args.val, args.test, args.size,
            args.timesteps, args.streams, args.tuxpaint_augment, split=args.split,
            heldout_pairs=args.heldout_pairs)
    return 0
