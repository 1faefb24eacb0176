"""Scene + motion activity videos (RGB and optical flow): appearance and motion both count.

``minicaffe data activity_scenes`` builds, offline and from a seed, short videos of
one shape (circle, square, diamond or cross; its shape and colour carry no class
information) acting in a static *scene* (water, grass, sand or night: a
background colour with a fixed texture).  Like UCF-101, a class is an action in
its usual places: the motion tells part of the evidence and the scene the rest.

    class        motion                                    scene (p = 0.75 / 0.25)
    0 slide_right  translates right at a constant speed    water / grass
    1 slide_left   translates left                         water / grass
    2 grow         radius grows linearly                   grass / sand
    3 shrink       radius shrinks linearly                 grass / sand
    4 appear       fades in (opacity 0 -> 1)               sand  / night
    5 disappear    fades out (opacity 1 -> 0)              sand  / night
    6 bounce       back and forth horizontally             night / water
    7 pulse        grows and shrinks in turn               night / water

Every video draws its scene (from its class's two scenes), shape, colour,
position, size, speed, period and phase at random.  What each input can tell:

* a single RGB frame sees the scene (narrows the class to about two of the
  eight: chance is 12.5%, the scene alone gives 37.5%) and a half-transparent
  object (appear/disappear); it cannot see the direction of time, so each
  pair (slide_right, slide_left), (grow, shrink), (appear, disappear) is
  indistinguishable from one frame: a ``slide_left`` video is a
  ``slide_right`` video played backwards, and so on;
* a single flow frame sees the motion but not the static scene: it tells
  right from left and growing from shrinking, not ``bounce`` from a slide nor
  ``pulse`` from grow/shrink (that needs the reversal, i.e. several frames),
  and a fade has (almost) no motion at all;
* the sequence of RGB frames sees both, and the order; the sequence of flow
  frames sees the reversals but still no scene.

So single-frame RGB sits well above chance but below single-frame flow,
LRCN over flow gains on bounce/pulse, and late fusion adds the scene to the
motion.  Flow is computed as for moving-MNIST (minicaffe.lrcn.datasets.flow,
Lucas-Kanade on the gray frames, stored as LRCN stores flow) with FLOW_PARAMS.

Output under ``--out`` (default data/activity_scenes) is laid out as
``minicaffe data moving_mnist``'s (see minicaffe.lrcn.datasets.moving_mnist):
``videos_{train,test}.h5`` (``rgb``, ``flow``, ``label``, ``scene``, ``shape``
and the motion parameters), the clip shards ``{rgb,flow}_{train,test}_NNN.h5``
in LRCN's time-major layout with their lists ``{rgb,flow}_{train,test}.txt``,
and ``meta.json``.
"""
import json
import os

import h5py
import numpy as np

from ...errors import MinicaffeError
from ...commands.progress import progress
from . import flow as flowlib
from .moving_mnist import _triangle, add_clip_arguments, clip_starts, write_clip_files

CLASSES = ['slide_right', 'slide_left', 'grow', 'shrink', 'appear', 'disappear', 'bounce', 'pulse']
SCENES = ['water', 'grass', 'sand', 'night']
SCENE_RGB = np.array([[40, 80, 170], [50, 140, 50], [200, 180, 110], [35, 30, 60]], np.float32)
# (primary, secondary) scene of every class; the primary is drawn with probability PRIMARY_P
CLASS_SCENES = [(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (3, 0), (3, 0)]
PRIMARY_P = 0.75
SHAPES = ['circle', 'square', 'diamond', 'cross']
OBJECT_RGB = np.array([[255, 60, 60], [255, 230, 40], [240, 240, 240], [255, 120, 255],
                       [60, 230, 230], [20, 20, 20]], np.float32)
MIN_GRAY_CONTRAST = 70.0     # object vs scene gray level: flow is computed on gray frames
# Lucas-Kanade settings of this set's flow: the motions are at most 1.5 pixels per frame,
# so one level suffices (a pyramid at 24x24 spreads the object's flow over the whole
# frame), and a stronger Tikhonov term keeps the pixel noise on the flat, textured scenes
# from showing as flow (0.03 px instead of 0.2 px on a static scene).
FLOW_PARAMS = dict(levels=1, reg=1e-2)

DEFAULTS = dict(size=24, frames=24, clip_length=16, clip_stride=8, clips_per_batch=8,
                train_per_class=300, test_per_class=40, seed=1701, noise=2.0, texture=8.0,
                batches_per_file=48)


# ------------------------------------------------------------------ parameters
def sample_params(labels, rs, size):
    """Random scene, object and motion parameters of videos of the given classes ((V,) arrays)."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    primary = np.array([CLASS_SCENES[c][0] for c in labels], np.int64)
    secondary = np.array([CLASS_SCENES[c][1] for c in labels], np.int64)
    scene = np.where(rs.random(n) < PRIMARY_P, primary, secondary)
    return dict(
        label=labels, scene=scene,
        shape=rs.integers(0, len(SHAPES), n),
        color=rs.integers(0, len(OBJECT_RGB), n),
        scene_jitter=rs.uniform(-15, 15, (n, 3)),
        x0=rs.uniform(0, size, n), y0=rs.uniform(0, size, n),
        radius=rs.uniform(3.5, 6.0, n),            # translating / fading objects
        r_low=rs.uniform(2.0, 3.5, n),             # growing / shrinking / pulsing objects
        speed=rs.uniform(0.8, 1.5, n),             # pixels per frame
        rate=rs.uniform(0.2, 0.3, n),              # radius change, pixels per frame
        half_period=rs.integers(4, 7, n).astype(np.float64),   # frames between reversals
        phase=rs.integers(0, 12, n).astype(np.float64),
    )


def trajectories(p, num_frames):
    """Centre x, y, radius and opacity of every frame: arrays (V, F).

    The time-reversed classes are exact reversals: slide_left(t) = slide_right(F-1-t)
    on the torus (x0 uniform), shrink(t) = grow(F-1-t), disappear(t) = appear(F-1-t)."""
    t = np.arange(num_frames, dtype=np.float64)[None, :]
    rev = (num_frames - 1) - t
    lab = p['label'][:, None]
    tri = _triangle(t, p['half_period'][:, None], p['phase'][:, None])
    s, g = p['speed'][:, None], p['rate'][:, None]
    dx = np.select([lab == 0, lab == 1, lab == 6], [s * t, -s * t, s * tri], 0.0)
    x = p['x0'][:, None] + dx
    y = np.broadcast_to(p['y0'][:, None], x.shape)
    r_lo = p['r_low'][:, None]
    r = np.select([lab == 2, lab == 3, lab == 7], [r_lo + g * t, r_lo + g * rev, r_lo + 1.5 + g * tri],
                  p['radius'][:, None] + 0 * t)
    ramp = t / max(num_frames - 1, 1)
    alpha = np.select([lab == 4, lab == 5], [ramp, 1.0 - ramp], 1.0)
    return x, y, r, alpha


# ------------------------------------------------------------------ rendering
def coverage(shape, dx, dy, r):
    """Anti-aliased coverage in [0, 1] of a shape of 'radius' r at offsets dx, dy (pixels).

    shape (V,), dx/dy/r broadcastable to (V, F, S, S): signed distance d to the outline,
    coverage = clip(0.5 - d, 0, 1) (one pixel of soft edge)."""
    ax, ay = np.abs(dx), np.abs(dy)
    sh = shape[:, None, None, None]
    d = np.select([sh == 0, sh == 1, sh == 2],
                  [np.sqrt(dx * dx + dy * dy) - r,
                   np.maximum(ax, ay) - 0.85 * r,
                   (ax + ay) - 1.2 * r],
                  np.minimum(np.maximum(ax - r, ay - 0.35 * r), np.maximum(ax - 0.35 * r, ay - r)))
    return np.clip(0.5 - d, 0.0, 1.0)


def scene_and_object_colours(p, rs, size, texture):
    """Backgrounds (V, 3, S, S) float32 (scene colour + static texture) and object colours (V, 3).

    An object too close in gray level to its scene is drawn in the inverse colour (or, if
    that is close too, in white on a dark scene and black on a light one), so that its
    motion always shows in the (gray) optical flow."""
    n = len(p['label'])
    base = SCENE_RGB[p['scene']] + p['scene_jitter'].astype(np.float32)
    tex = rs.standard_normal((n, 1, size, size)).astype(np.float32) * texture
    bg = base[:, :, None, None] + tex
    obj = OBJECT_RGB[p['color']].copy()
    low = np.abs(obj.mean(1) - base.mean(1)) < MIN_GRAY_CONTRAST
    obj[low] = 255.0 - obj[low]
    still = np.abs(obj.mean(1) - base.mean(1)) < MIN_GRAY_CONTRAST
    obj[still] = np.where(base[still].mean(1, keepdims=True) < 128, 255.0, 0.0)
    return bg, obj


def render(p, x, y, r, alpha, bg, obj, size, noise=0.0, rs=None):
    """Frames (V, F, 3, S, S) uint8: the object composited over its static scene (torus)."""
    pix = np.arange(size, dtype=np.float64) + 0.5
    half = size / 2.0
    dx = np.mod(pix[None, None, None, :] - x[:, :, None, None] + half, size) - half   # (V,F,1,S)
    dy = np.mod(pix[None, None, :, None] - y[:, :, None, None] + half, size) - half   # (V,F,S,1)
    cov = coverage(p['shape'], dx, dy, r[:, :, None, None]) * alpha[:, :, None, None]
    cov = cov.astype(np.float32)[:, :, None]                                          # (V,F,1,S,S)
    img = bg[:, None] * (1 - cov) + obj[:, None, :, None, None] * cov
    if noise:
        img = img + (rs.standard_normal(img.shape) * noise).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_videos(labels, rs, size=24, frames=24, noise=2.0, texture=8.0, flow=True, chunk=64, desc=''):
    """Render videos (and their flow).  Returns (rgb (V,F,3,S,S), flow or None, params)."""
    p = sample_params(labels, rs, size)
    x, y, r, a = trajectories(p, frames + 1)
    bg, obj = scene_and_object_colours(p, rs, size, texture)
    n = len(labels)
    rgb = np.empty((n, frames, 3, size, size), np.uint8)
    fl = np.empty((n, frames, 3, size, size), np.uint8) if flow else None
    for s in progress(range(0, n, chunk), total=(n + chunk - 1) // chunk, desc=desc):
        e = min(n, s + chunk)
        sub = {k: v[s:e] for k, v in p.items()}
        v = render(sub, x[s:e], y[s:e], r[s:e], a[s:e], bg[s:e], obj[s:e], size, noise, rs)
        rgb[s:e] = v[:, :frames]
        if flow:
            fl[s:e] = flowlib.frames_to_flow_images(v, boundary='wrap', **FLOW_PARAMS)   # objects wrap
    return rgb, fl, p


def balanced_labels(per_class, rs):
    lab = np.repeat(np.arange(len(CLASSES)), per_class)
    rs.shuffle(lab)
    return lab


# ------------------------------------------------------------------ the data set
def _check(size, frames, clip_length, clip_stride, clips_per_batch, train_per_class, test_per_class):
    if size < 12:
        raise MinicaffeError('activity_scenes: --size %d is too small (at least 12 pixels)' % size)
    for name, v in (('--frames', frames), ('--clip-length', clip_length), ('--clip-stride', clip_stride),
                    ('--clips-per-batch', clips_per_batch), ('--train-per-class', train_per_class),
                    ('--test-per-class', test_per_class)):
        if v < 1:
            raise MinicaffeError('activity_scenes: %s must be at least 1, got %d' % (name, v))
    if clip_length > frames:
        raise MinicaffeError('activity_scenes: --clip-length %d is longer than the videos (--frames %d)'
                             % (clip_length, frames))


def prepare(out='data/activity_scenes', size=24, frames=24, clip_length=16, clip_stride=8,
            clips_per_batch=8, train_per_class=300, test_per_class=40, seed=1701, noise=2.0,
            texture=8.0, batches_per_file=48, log=print):
    """Build the data set (see the module doc); returns its meta dict (also meta.json)."""
    _check(size, frames, clip_length, clip_stride, clips_per_batch, train_per_class, test_per_class)
    os.makedirs(out, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(2)
    summary = {}
    for split, per_class, child in (('train', train_per_class, children[0]),
                                    ('test', test_per_class, children[1])):
        rs = np.random.default_rng(child)
        labels = balanced_labels(per_class, rs)
        rgb, fl, p = make_videos(labels, rs, size, frames, noise, texture,
                                 desc='rendering %s videos' % split)
        vpath = os.path.join(out, 'videos_%s.h5' % split)
        with h5py.File(vpath + '.tmp', 'w') as f:
            f.create_dataset('rgb', data=rgb, compression='gzip', compression_opts=1)
            f.create_dataset('flow', data=fl, compression='gzip', compression_opts=1)
            f.create_dataset('label', data=labels.astype(np.int32))
            for k in ('scene', 'shape', 'color'):
                f.create_dataset(k, data=p[k].astype(np.int32))
            for k in ('x0', 'y0', 'radius', 'r_low', 'speed', 'rate', 'half_period', 'phase'):
                f.create_dataset('param_' + k, data=p[k].astype(np.float32))
            f.attrs['classes'] = json.dumps(CLASSES)
            f.attrs['scenes'] = json.dumps(SCENES)
            f.attrs['seed'] = seed
        os.replace(vpath + '.tmp', vpath)
        order = rs.permutation(len(labels)) if split == 'train' else np.arange(len(labels))
        for kind, vids in (('rgb', rgb), ('flow', fl)):
            _, nb = write_clip_files(out, '%s_%s' % (kind, split), vids, labels, order,
                                     clip_length, clip_stride, clips_per_batch, batches_per_file,
                                     desc='writing %s %s clips' % (kind, split), classes=CLASSES)
        summary[split] = dict(videos=len(labels), batches=nb,
                              clips=len(labels) * len(clip_starts(frames, clip_length, clip_stride)))
        log('%s: %d videos, %d clips in %d batches of %d clips x %d frames'
            % (split, len(labels), summary[split]['clips'], nb, clips_per_batch, clip_length))
    meta = dict(classes=CLASSES, scenes=SCENES, class_scenes=CLASS_SCENES, primary_p=PRIMARY_P,
                size=size, frames=frames, clip_length=clip_length, clip_stride=clip_stride,
                clips_per_batch=clips_per_batch, seed=seed, train_per_class=train_per_class,
                test_per_class=test_per_class, noise=noise, texture=texture,
                flow_scale=flowlib.FLOW_SCALE, flow_params=FLOW_PARAMS, splits=summary)
    with open(os.path.join(out, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


# ------------------------------------------------------------------ command line
def add_arguments(p):
    d = DEFAULTS
    p.add_argument('--out', default='data/activity_scenes',
                   help='output folder (default %(default)s)')
    p.add_argument('--seed', type=int, default=d['seed'], help='random seed of the videos (default %(default)s)')
    p.add_argument('--size', type=int, default=d['size'], help='frame side in pixels (default %(default)s)')
    add_clip_arguments(p, d)
    p.add_argument('--noise', type=float, default=d['noise'],
                   help='std of the per-frame pixel noise, 0..255 scale (default %(default)s)')
    p.add_argument('--texture', type=float, default=d['texture'],
                   help='std of the static scene texture, 0..255 scale (default %(default)s)')


def run(args):
    prepare(args.out, args.size, args.frames, args.clip_length, args.clip_stride, args.clips_per_batch,
            args.train_per_class, args.test_per_class, args.seed, args.noise, args.texture,
            args.batches_per_file)
    print('Wrote %s' % args.out)
    return 0
