"""`minicaffe caption`: sentences for images with the LRCN deploy nets.

Works as Caffe's examples/coco_caption/captioner.py does:

* an image net (``image_to_feature.deploy.prototxt``: the CNN up to fc8) turns
  each image into a feature;
* a one-word-step net (``lrcn_word_to_preds.deploy.prototxt``, T = 1, the
  variant picked by stages) takes ``cont_sentence``, ``input_sentence`` (the
  previous word; 0 = EOS starts a sentence) and ``image_features`` and gives
  ``probs`` (and the logits ``predict``) for the next word.  Its LSTMs carry
  h and c from one forward call to the next; ``cont_sentence`` = 0 at the first
  word starts a fresh sentence, 1 afterwards continues it.

Generation:

* sampling (``sample``): one forward per word for a batch of images, the next
  word drawn from softmax(logits / temperature) (temperature 0 = argmax =
  greedy).  Upstream's ``temp`` multiplies the logits, i.e. it is our
  1 / temperature.  A stream stops at EOS or ``max_length`` words.
* beam search (``beam_search``, beam size k): upstream's rule -- every
  unfinished beam is extended by its k most probable words, finished beams
  (ending in EOS or at max_length) compete unchanged, the k best by summed log
  probability survive, and the search ends when all k are finished.  As in
  upstream, each prefix's next-word distribution comes from replaying the
  prefix through the carried-state net from cont = 0 (the carried state cannot
  be split between beams); here all beams of all images are replayed together
  as the streams of one batch.  With k = 1 this is greedy decoding.

Writes the captions (text, one line per image, and JSON) and a PNG grid of the
images with their captions (Pillow).
"""
import json
import os

import numpy as np

from ..errors import MinicaffeError
from ..fileio import check_regular_file

# The shipped deploy nets: in the checkout the package sits in (found from this file,
# whatever the current folder), else relative to the current folder.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # minicaffe/
_CHECKOUT_NETS = os.path.join(os.path.dirname(_PACKAGE_DIR), 'prototxt', 'lrcn', 'caption')
DEFAULT_DIR = _CHECKOUT_NETS if os.path.isdir(_CHECKOUT_NETS) else os.path.join('prototxt', 'lrcn',
                                                                                 'caption')
DEFAULT_VOCAB = os.path.join('data', 'captions', 'scenes', 'vocabulary.txt')


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Captioner(object):
    """Deploy-net captioner.  ``image_net_proto`` may be None for a language
    model (a word net without ``image_features``)."""

    def __init__(self, weights, word_net_proto, vocab_path, image_net_proto=None, stages=None):
        from ..net import Net, TEST
        self.word_net = Net(word_net_proto, TEST, stages=list(stages or []), weights=weights)
        self.image_net = Net(image_net_proto, TEST, weights=weights) if image_net_proto else None
        with open(vocab_path, encoding='utf-8') as f:
            self.vocab = ['<EOS>'] + [w.strip() for w in f if w.strip()]
        V = self.word_net.blobs['predict'].shape[2]
        if len(self.vocab) != V:
            raise MinicaffeError('vocabulary %s has %d words + EOS = %d, but the net predicts %d'
                                 % (vocab_path, len(self.vocab) - 1, len(self.vocab), V))
        # image_features: an image net's output, or any static input given to the
        # generation calls directly (e.g. the subject-verb-object tuple of video description)
        self.uses_image = 'image_features' in self.word_net.inputs

    # ---------------------------------------------------------------- images
    @property
    def image_shape(self):
        return self.image_net.blobs['data'].shape[1:]

    def load_image(self, path):
        """An image file -> (C, H, W) float array of 0..255 RGB pixels at the net's size."""
        from PIL import Image
        C, H, W = self.image_shape
        im = Image.open(path)
        if im.mode in ('RGBA', 'LA', 'P'):
            im = im.convert('RGBA')
            bg = Image.new('RGBA', im.size, (255, 255, 255, 255))
            bg.alpha_composite(im)
            im = bg
        im = im.convert('RGB').resize((W, H), Image.BOX)
        return np.asarray(im, np.float32).transpose(2, 0, 1)

    def compute_features(self, images, batch_size=100, output='fc8'):
        """(n, C, H, W) images (0..255) -> (n, D) features from the image net."""
        if self.image_net is None:
            raise MinicaffeError('no image net was given to compute image features with')
        images = np.asarray(images, np.float32)
        net = self.image_net
        n = len(images)
        feats = None
        for s in range(0, n, batch_size):
            chunk = images[s:s + batch_size]
            net.blobs['data'].reshape((len(chunk),) + tuple(self.image_shape))
            net.reshape()
            net.blobs['data'].data[...] = chunk
            net.forward()
            out = net.blobs[output].data.reshape(len(chunk), -1)
            if feats is None:
                feats = np.empty((n, out.shape[1]), np.float32)
            feats[s:s + len(chunk)] = out
        return feats

    # ---------------------------------------------------------------- one word
    def set_caption_batch_size(self, n):
        net = self.word_net
        if net.blobs['cont_sentence'].shape == (1, n):
            return
        net.blobs['cont_sentence'].reshape((1, n))
        net.blobs['input_sentence'].reshape((1, n))
        if self.uses_image:
            net.blobs['image_features'].reshape((n,) + net.blobs['image_features'].shape[1:])
        net.reshape()

    def step(self, previous_words, cont, features=None):
        """One forward of the word net; returns (probs, logits), each (n, V)."""
        net = self.word_net
        n = len(previous_words)
        self.set_caption_batch_size(n)
        net.blobs['cont_sentence'].data[0] = cont
        net.blobs['input_sentence'].data[0] = previous_words
        if self.uses_image:
            net.blobs['image_features'].data[...] = features.reshape(net.blobs['image_features'].shape)
        net.forward()
        return (net.blobs['probs'].data[0].astype(np.float64),
                net.blobs['predict'].data[0].astype(np.float64))

    def _features(self, features, n):
        if not self.uses_image:
            return None
        return np.asarray(features, np.float32).reshape(n, -1)

    # ---------------------------------------------------------------- generation
    def sample(self, features, temperature=1.0, max_length=20, rng=None, n=None):
        """Sample one caption per feature row (temperature 0: greedy argmax).

        Returns a list of word-index lists (ending with 0 when EOS was reached).
        """
        n = len(features) if features is not None else n
        rng = rng if rng is not None else np.random.default_rng()
        feats = self._features(features, n)
        captions = [[] for _ in range(n)]
        done = np.zeros(n, bool)
        prev = np.zeros(n, np.float32)
        for t in range(max_length):
            cont = np.zeros(n, np.float32) if t == 0 else np.ones(n, np.float32)
            probs, logits = self.step(prev, cont, feats)
            if temperature == 0:
                words = logits.argmax(axis=1)
            else:
                p = probs if temperature == 1.0 else softmax(logits, temperature)
                cum = p.cumsum(axis=1)
                r = rng.random(n)[:, None] * cum[:, -1:]
                words = np.minimum((cum < r).sum(axis=1), p.shape[1] - 1)
            for i in np.flatnonzero(~done):
                captions[i].append(int(words[i]))
                if words[i] == 0:
                    done[i] = True
            if done.all():
                break
            prev = np.where(done, 0, words).astype(np.float32)
        return captions

    def greedy(self, features, max_length=20, n=None):
        return self.sample(features, temperature=0, max_length=max_length, n=n)

    def prefix_log_probs(self, prefixes, features):
        """Next-word log probabilities after each prefix (replayed from cont = 0)."""
        m = len(prefixes)
        L = max(len(p) for p in prefixes)
        feats = self._features(features, m)
        logp = np.zeros((m, len(self.vocab)))
        for t in range(L + 1):
            prev = np.array([p[t - 1] if 0 < t <= len(p) else 0 for p in prefixes], np.float32)
            cont = np.full(m, 0.0 if t == 0 else 1.0, np.float32)
            probs, _ = self.step(prev, cont, feats)
            for i, p in enumerate(prefixes):
                if len(p) == t:
                    with np.errstate(divide='ignore'):
                        logp[i] = np.log(probs[i])
        return logp

    def beam_search(self, features, beam_size=3, max_length=20, n=None):
        """Upstream's beam search for each image; returns, per image, the beams
        as (word list, summed log prob), best first."""
        if beam_size < 1:
            raise MinicaffeError('beam size must be at least 1, got %d' % beam_size)
        n = len(features) if features is not None else n
        feats = self._features(features, n)
        beams = [[([], 0.0)] for _ in range(n)]

        def finished(seq):
            return bool(seq) and (seq[-1] == 0 or len(seq) >= max_length)

        while True:
            todo = [(i, j) for i in range(n) for j, (seq, _) in enumerate(beams[i])
                    if not finished(seq)]
            if not todo:
                break
            logp = self.prefix_log_probs([beams[i][j][0] for i, j in todo],
                                         None if feats is None else feats[[i for i, _ in todo]])
            expansions = [[] for _ in range(n)]
            for i in range(n):
                for seq, lp in beams[i]:
                    if finished(seq):
                        expansions[i].append((seq, lp))
            for (i, j), row in zip(todo, logp):
                seq, lp = beams[i][j]
                for w in np.argsort(row, kind='stable')[-beam_size:]:
                    expansions[i].append((seq + [int(w)], lp + float(row[w])))
            for i in range(n):
                # stable sort by decreasing log prob (upstream's list.sort)
                expansions[i].sort(key=lambda e: -e[1])
                beams[i] = expansions[i][:beam_size]
        return beams

    # ---------------------------------------------------------------- text
    def words(self, indices):
        out = []
        for i in indices:
            if i == 0:
                break
            out.append(self.vocab[i])
        return out

    def sentence(self, indices):
        """Upstream's display form: capitalised, '.' after EOS, '...' if cut at max length."""
        s = ' '.join(self.words(indices))
        if s:
            s = s[0].upper() + s[1:]
        return s + ('.' if indices and indices[-1] == 0 else '...')


# -------------------------------------------------------------------- outputs
def caption_grid(images, captions, path, columns=5, scale=4, titles=None):
    """A PNG grid: each (C, H, W) 0..255 image enlarged ``scale`` times with its caption."""
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    imgs = [np.clip(np.asarray(im), 0, 255).astype(np.uint8).transpose(1, 2, 0) for im in images]
    h, w = imgs[0].shape[:2]
    cw, ch = w * scale, h * scale
    lines = []
    for k, c in enumerate(captions):
        text = layout_words(c, font, cw)
        if titles:
            text = layout_words(titles[k], font, cw) + text
        lines.append(text)
    line_h = 12
    text_h = line_h * max(len(t) for t in lines) + 6
    cols = min(columns, len(imgs))
    rows = (len(imgs) + cols - 1) // cols
    pad = 6
    grid = Image.new('RGB', (cols * (cw + pad) + pad, rows * (ch + text_h + pad) + pad), 'white')
    draw = ImageDraw.Draw(grid)
    for k, (im, text) in enumerate(zip(imgs, lines)):
        r, c = divmod(k, cols)
        x, y = pad + c * (cw + pad), pad + r * (ch + text_h + pad)
        grid.paste(Image.fromarray(im).resize((cw, ch), Image.NEAREST), (x, y))
        for j, line in enumerate(text):
            for word, dx in line:
                draw.text((x + dx, y + ch + 3 + line_h * j), word, fill='black', font=font)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    grid.save(path)
    return path


def layout_words(text, font, width):
    """Lines of (word, x offset) filling ``width`` pixels.  Words are placed one by one
    with a visible gap: the space of Pillow's default font is 2 px wide, which made
    "A small" read "Asmall" when whole lines were drawn.  A word wider than ``width``
    gets a line of its own."""
    gap = max(font.getlength(' '), 0.75 * font.getlength('n'))
    lines, line, x = [], [], 0.0
    for word in text.split():
        w = font.getlength(word)
        if line and x + gap + w > width:
            lines.append(line)
            line, x = [], 0.0
        if line:
            x += gap
        line.append((word, int(round(x))))
        x += w
    if line or not lines:
        lines.append(line)
    return lines


def _load_inputs(captioner, inputs, limit=None):
    """Image files, or .h5 files with a 'data' dataset -> (images, names)."""
    import h5py
    images, names = [], []
    for p in inputs:
        if not os.path.exists(p):
            raise MinicaffeError('image %s does not exist' % p)
        check_regular_file(p, 'input', limit=float('inf'))
        if p.endswith(('.h5', '.hdf5')):
            with h5py.File(p, 'r') as f:
                if 'data' not in f:
                    raise MinicaffeError('%s has no "data" dataset' % p)
                data = f['data'][:limit] if limit else f['data'][:]
            for i, im in enumerate(data):
                images.append(np.asarray(im, np.float32))
                names.append('%s[%d]' % (p, i))
        else:
            images.append(captioner.load_image(p))
            names.append(p)
        if limit and len(images) >= limit:
            break
    if limit:
        images, names = images[:limit], names[:limit]
    if not images:
        raise MinicaffeError('no images given')
    return np.stack(images), names


# -------------------------------------------------------------------- command line
def add_arguments(p):
    p.add_argument('images', nargs='+', help='image files, or .h5 files with a "data" dataset '
                   '(C x H x W, 0..255), e.g. data/captions/scenes/test_images.h5')
    p.add_argument('--weights', required=True, help='trained LRCN .caffemodel')
    p.add_argument('--vocab', default=DEFAULT_VOCAB,
                   help='vocabulary file of `minicaffe data captions`; a relative path is looked'
                        ' up in the current folder, then beside --word-net and in the folders'
                        ' above it (the checkout holding prototxt/ and data/)')
    p.add_argument('--image-net', default=os.path.join(DEFAULT_DIR, 'image_to_feature.deploy.prototxt'),
                   help='deploy net: image -> feature')
    p.add_argument('--word-net', default=os.path.join(DEFAULT_DIR, 'lrcn_word_to_preds.deploy.prototxt'),
                   help='deploy net: one word step (previous word, image feature) -> next word')
    p.add_argument('--stage', action='append', default=None,
                   help="variant stages (repeatable); default: factored, 2-layer")
    p.add_argument('--beam-size', type=int, default=1, help='beam search width k (default 1 = greedy)')
    p.add_argument('--temperature', type=float, default=None,
                   help='sample with this temperature instead of beam search (0 = argmax)')
    p.add_argument('--samples', type=int, default=1, help='captions sampled per image')
    p.add_argument('--max-length', type=int, default=20, help='words per caption at most')
    p.add_argument('--limit', type=int, default=None, help='caption at most this many images')
    p.add_argument('--seed', type=int, default=1701, help='random seed of --temperature sampling')
    p.add_argument('--out', default=None,
                   help='captions, one line per image (+ .json beside); default'
                        ' <weights without extension>_captions.txt, beside --weights')
    p.add_argument('--grid', default=None,
                   help='PNG grid of images with captions; default --out with .png; "none" or "": no grid')
    p.add_argument('--columns', type=int, default=5, help='images per row of --grid')


def find_default(path, near):
    """A relative ``path`` as given when it exists (the current folder), else the first
    that exists of ``near``'s folder and the folders above it joined with ``path``;
    ``path`` itself when none does (the caller's error then names it)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    folder = os.path.dirname(os.path.abspath(near))
    while True:
        candidate = os.path.join(folder, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return path
        folder = parent


def output_paths(args):
    """(captions .txt, grid .png or None) from --out/--grid and --weights."""
    out = args.out or os.path.splitext(args.weights)[0] + '_captions.txt'
    if args.grid is not None and args.grid.lower() in ('', 'none'):
        return out, None
    return out, args.grid or os.path.splitext(out)[0] + '.png'


def run(args):
    stages = args.stage if args.stage is not None else ['factored', '2-layer']
    args.vocab = find_default(args.vocab, args.word_net)
    for path in (args.weights, args.image_net, args.word_net):
        if not os.path.exists(path):
            raise MinicaffeError('%s does not exist' % path)
    if not os.path.exists(args.vocab):
        raise MinicaffeError('vocabulary %s does not exist (looked in the current folder and beside'
                             ' %s and above; run `minicaffe data captions` or give --vocab)'
                             % (args.vocab, args.word_net))
    out_path, grid_path = output_paths(args)
    cap = Captioner(args.weights, args.word_net, args.vocab, args.image_net, stages)
    images, names = _load_inputs(cap, args.images, args.limit)
    feats = cap.compute_features(images)
    rng = np.random.default_rng(args.seed)
    results = []
    if args.temperature is not None:
        per_image = [[] for _ in names]
        for _ in range(args.samples):
            for i, c in enumerate(cap.sample(feats, args.temperature, args.max_length, rng)):
                per_image[i].append(c)
        for name, caps in zip(names, per_image):
            results.append({'image': name, 'captions': [cap.sentence(c) for c in caps],
                            'strategy': 'sample T=%g' % args.temperature})
    else:
        for name, beams in zip(names, cap.beam_search(feats, args.beam_size, args.max_length)):
            results.append({'image': name, 'captions': [cap.sentence(b) for b, _ in beams],
                            'log_probs': [lp for _, lp in beams],
                            'strategy': 'beam k=%d' % args.beam_size})
    if os.path.dirname(out_path):
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
    json_path = os.path.splitext(out_path)[0] + '.json'
    with open(out_path, 'w', encoding='utf-8') as f:
        for r in results:
            f.write('%s\t%s\n' % (r['image'], r['captions'][0]))
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=1)
    for r in results:
        print('%s: %s' % (r['image'], r['captions'][0]))
    written = [out_path, json_path]
    if grid_path:
        caption_grid(images, [r['captions'][0] for r in results], grid_path, args.columns)
        written.append(grid_path)
    print('Wrote %s' % ', '.join(written))
    return 0


def main(argv=None):
    """``python -m minicaffe.lrcn.captioner`` -- the same as ``minicaffe caption``."""
    import sys
    from ..commands import cli
    return cli.main(['caption'] + list(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    raise SystemExit(main())
