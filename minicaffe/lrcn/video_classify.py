"""Video classification with the LRCN activity deploy nets (``minicaffe classify-video``).

As LRCN's ``classify_video.py``: a video is cut into clips of T frames every
``clip_stride`` frames (16 and 8 upstream); a single-frame net scores every
frame on its own, an LRCN net (one with a ``clip_markers`` input) runs each clip
through its LSTM with cont = 0 at the clip's first frame; either way a clip's
scores are the mean of its frames' class probabilities, and the video's scores
the mean over its clips.  Late fusion is a weighted average of two nets'
(RGB and flow) video scores: ``(1 - w) * rgb + w * flow`` (upstream reports
w = 0.5 and w = 0.67).

Inputs (all frames 0..255, (F, 3, H, W) or (F, H, W, 3)):

* a ``videos_<split>.h5`` written by ``minicaffe data moving_mnist`` (datasets
  ``rgb`` and ``flow``; ``--index`` picks videos, default all; with labels the
  accuracy is reported);
* a ``.npy`` array of one video's frames;
* a folder of frame images (sorted by name), read with Pillow.

A flow net needs flow frames: from the .h5 its ``flow`` dataset, otherwise
computed from the RGB frames (minicaffe.lrcn.datasets.flow, F frames give F - 1 flow
frames), as LRCN's flow images.
"""
import json
import logging
import os

import numpy as np

from ..errors import MinicaffeError
from ..fileio import check_regular_file

log = logging.getLogger('minicaffe')


def clip_starts(num_frames, clip_length, clip_stride):
    """Start frames of the clips of a video; a video shorter than one clip gives no clip."""
    if num_frames < clip_length:
        return []
    return list(range(0, num_frames - clip_length + 1, clip_stride))


class VideoClassifier(object):
    """A deploy net (single-frame or LRCN) that scores clips and videos.

    ``clip_length``: default the T of the LRCN net's reshape-data layer, else 16.
    ``batch_clips``: clips per forward pass (N)."""

    def __init__(self, model, weights, clip_length=None, clip_stride=8, batch_clips=8):
        from ..net import Net
        from ..protoio import pb
        self.net = Net(model, pb.TEST, weights=weights)
        self.is_lstm = 'clip_markers' in self.net.blobs
        if 'probs' not in self.net.blobs:
            raise MinicaffeError('%s: the deploy net needs a "probs" output (Softmax)' % model)
        t = self._lstm_steps(model) if self.is_lstm else None
        self.clip_length = int(clip_length or t or 16)
        if self.is_lstm and t and self.clip_length != t:
            raise MinicaffeError('%s: the LRCN net is built for clips of %d frames (reshape-data),'
                                 ' not %d' % (model, t, self.clip_length))
        self.clip_stride = int(clip_stride)
        self.batch_clips = int(batch_clips)
        if self.clip_stride < 1 or self.batch_clips < 1:
            raise MinicaffeError('clip stride and clips per batch must be positive')
        self.frame_shape = tuple(self.net.blobs['data'].shape[1:])

    @staticmethod
    def _lstm_steps(model):
        """T: dim 0 of the net's "reshape-data" layer (None when absent or inferred)."""
        from ..protoio import pb, read_text
        param = read_text(model, pb.NetParameter)
        for lp in param.layer:
            if lp.type == 'Reshape' and lp.name == 'reshape-data' and lp.reshape_param.shape.dim:
                d = int(lp.reshape_param.shape.dim[0])
                if d > 0:
                    return d
        return None

    def _check_frames(self, frames):
        frames = np.asarray(frames)
        if frames.ndim == 4 and frames.shape[1:] != self.frame_shape and \
                frames.shape[1:] == self.frame_shape[1:] + self.frame_shape[:1]:
            frames = frames.transpose(0, 3, 1, 2)        # (F, H, W, C) -> (F, C, H, W)
        if frames.ndim != 4 or frames.shape[1:] != self.frame_shape:
            raise MinicaffeError('frames must be (F, %d, %d, %d) (or channels last), got %s'
                                 % (self.frame_shape + (frames.shape,)))
        return frames.astype(np.float32)

    def frame_scores(self, clips):
        """clips (C, T, ch, H, W) -> (C, T, K) per-frame class probabilities."""
        clips = np.asarray(clips, np.float32)
        c, t = clips.shape[:2]
        out = []
        net = self.net
        for b0 in range(0, c, self.batch_clips):
            blk = clips[b0:b0 + self.batch_clips]
            n = len(blk)
            if self.is_lstm:
                # LRCN layout: time-major rows t * n + i, cont 0 at every clip's first frame
                rows = blk.swapaxes(0, 1).reshape((t * n,) + blk.shape[2:])
                cm = np.ones((t, n), np.float32)
                cm[0] = 0
                net.blobs['data'].reshape(rows.shape)
                net.blobs['clip_markers'].reshape((t * n,) + net.blobs['clip_markers'].shape[1:])
                net.blobs['data'].data[...] = rows
                net.blobs['clip_markers'].data[...] = cm.reshape(net.blobs['clip_markers'].shape)
                net.reshape()
                p = net.forward()['probs']                       # (T, n, K)
                out.append(np.asarray(p).reshape(t, n, -1).swapaxes(0, 1).copy())
            else:
                rows = blk.reshape((n * t,) + blk.shape[2:])
                net.blobs['data'].reshape(rows.shape)
                net.blobs['data'].data[...] = rows
                net.reshape()
                p = net.forward()['probs']                       # (n * T, K)
                out.append(np.asarray(p).reshape(n, t, -1).copy())
        return np.concatenate(out) if out else np.zeros((0, t, 0), np.float32)

    def clips_of(self, frames):
        frames = self._check_frames(frames)
        starts = clip_starts(len(frames), self.clip_length, self.clip_stride)
        if not starts:
            raise MinicaffeError('a video of %d frames is shorter than one clip (%d frames)'
                                 % (len(frames), self.clip_length))
        return np.stack([frames[s:s + self.clip_length] for s in starts]), starts

    def clip_scores(self, clips):
        """clips (C, T, ch, H, W) -> (C, K): each clip's mean frame probabilities."""
        return self.frame_scores(clips).mean(axis=1)

    def classify(self, frames):
        """One video (F, ch, H, W) -> dict(clip_starts, clip_probs (C, K), video_probs (K,))."""
        clips, starts = self.clips_of(frames)
        cp = self.clip_scores(clips)
        return dict(clip_starts=starts, clip_probs=cp, video_probs=cp.mean(axis=0))

    def classify_many(self, videos):
        """Videos (V, F, ch, H, W) of equal length -> (clip_probs (V, C, K), video_probs (V, K)),
        clips of all videos batched together."""
        videos = np.stack([self._check_frames(x) for x in videos])
        v = len(videos)
        starts = clip_starts(videos.shape[1], self.clip_length, self.clip_stride)
        if not starts:
            raise MinicaffeError('videos of %d frames are shorter than one clip (%d frames)'
                                 % (videos.shape[1], self.clip_length))
        clips = np.stack([videos[:, s:s + self.clip_length] for s in starts], axis=1)   # (V, C, T, ...)
        cp = self.clip_scores(clips.reshape((-1,) + clips.shape[2:]).astype(np.float32))
        cp = cp.reshape(v, len(starts), -1)
        return cp, cp.mean(axis=1)


def fuse(rgb_probs, flow_probs, flow_weight=0.5):
    """Late fusion: (1 - w) * rgb + w * flow."""
    return (1.0 - flow_weight) * np.asarray(rgb_probs) + flow_weight * np.asarray(flow_probs)


def accuracy(probs, labels):
    probs = np.asarray(probs)
    return float(np.mean(probs.reshape(-1, probs.shape[-1]).argmax(-1) == np.asarray(labels).reshape(-1)))


# ---------------------------------------------------------------- input reading
def read_frames(path):
    """A .npy video or a folder of frame images -> (F, ...) uint8/float array."""
    if os.path.isdir(path):
        from PIL import Image
        names = sorted(n for n in os.listdir(path)
                       if n.lower().endswith(('.png', '.jpg', '.jpeg', '.bmp', '.ppm')))
        if not names:
            raise MinicaffeError('%s: no frame images (.png/.jpg/.bmp/.ppm) in this folder' % path)
        return np.stack([np.asarray(Image.open(os.path.join(path, n)).convert('RGB')) for n in names])
    if path.endswith('.npy'):
        check_regular_file(path, 'frames file', limit=float('inf'))
        return np.load(path)
    raise MinicaffeError('%s: expected a videos .h5, a .npy of frames or a folder of frame images'
                         % path)


def compute_flow_frames(frames):
    """RGB frames (F, 3, H, W) or (F, H, W, 3) -> (F - 1, 3, H, W) uint8 LRCN flow images."""
    from .datasets.flow import frames_to_flow_images
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3 and frames.shape[1] != 3:
        frames = frames.transpose(0, 3, 1, 2)
    return frames_to_flow_images(np.clip(np.rint(frames), 0, 255).astype(np.uint8))


def _load_inputs(args):
    """-> (names, rgb videos or None, flow videos or None, labels or None, class names or None)."""
    path = args.input
    if path.endswith(('.h5', '.hdf5')):
        import h5py
        check_regular_file(path, 'videos file', limit=float('inf'))
        try:
            f = h5py.File(path, 'r')
        except OSError as e:
            raise MinicaffeError('%s: cannot open: %s' % (path, e)) from None
        with f:
            n = len(f['rgb']) if 'rgb' in f else len(f['flow'])
            idx = list(range(n)) if not args.index else args.index
            for i in idx:
                if not 0 <= i < n:
                    raise MinicaffeError('--index %d: %s holds %d videos' % (i, path, n))
            rgb = f['rgb'][sorted(set(idx))] if 'rgb' in f else None
            flow = f['flow'][sorted(set(idx))] if 'flow' in f else None
            order = [sorted(set(idx)).index(i) for i in idx]
            rgb = rgb[order] if rgb is not None else None
            flow = flow[order] if flow is not None else None
            labels = np.asarray(f['label'])[idx] if 'label' in f else None
            classes = json.loads(f.attrs['classes']) if 'classes' in f.attrs else None
        return ['%s[%d]' % (os.path.basename(path), i) for i in idx], rgb, flow, labels, classes
    frames = read_frames(path)
    return [path], frames[None], None, None, None


def _videos_for(kind, rgb, flow):
    if kind == 'flow':
        if flow is not None:
            return flow
        if rgb is None:
            raise MinicaffeError('no frames to compute flow from')
        return np.stack([compute_flow_frames(v) for v in rgb])
    if rgb is None:
        raise MinicaffeError('the input holds no RGB frames')
    return rgb


def add_arguments(p):
    p.add_argument('input', help='videos .h5 (minicaffe data moving_mnist), a .npy of frames,'
                                 ' or a folder of frame images')
    p.add_argument('--model', required=True, help='deploy net (deploy_lstm / deploy_singleFrame)')
    p.add_argument('--weights', required=True, help='trained .caffemodel')
    p.add_argument('--input-kind', choices=['rgb', 'flow'], default='rgb',
                   help='what --model reads: RGB frames or flow frames (default rgb)')
    p.add_argument('--flow-model', default=None, help='a second (flow) deploy net for late fusion')
    p.add_argument('--flow-weights', default=None, help='trained .caffemodel of --flow-model')
    p.add_argument('--flow-weight', type=float, default=0.5,
                   help='fusion weight w of the flow net: (1 - w) rgb + w flow (default 0.5)')
    p.add_argument('--clip-length', type=int, default=None, help='T (default: the net\'s, else 16)')
    p.add_argument('--clip-stride', type=int, default=8, help='frames between clip starts (default 8)')
    p.add_argument('--batch-clips', type=int, default=8, help='clips per forward pass (default 8)')
    p.add_argument('--index', type=int, action='append', default=[],
                   help='video index in a videos .h5 (repeatable; default all)')
    p.add_argument('--labels', default=None, help='class names file, one per line (default: the'
                                                  ' .h5\'s classes, else numbers)')
    p.add_argument('--clips', action='store_true', help='also print every clip\'s prediction')
    p.add_argument('--json', default=None, help='write all scores to this JSON file')


def run(args):
    if (args.flow_model is None) != (args.flow_weights is None):
        raise MinicaffeError('--flow-model and --flow-weights go together')
    if not 0.0 <= args.flow_weight <= 1.0:
        raise MinicaffeError('--flow-weight must be in [0, 1], got %g' % args.flow_weight)
    names, rgb, flow, labels, classes = _load_inputs(args)
    if args.labels:
        with open(args.labels, encoding='utf-8') as f:
            classes = [line.strip() for line in f if line.strip()]
    nets = [(args.input_kind, VideoClassifier(args.model, args.weights, args.clip_length,
                                              args.clip_stride, args.batch_clips))]
    if args.flow_model:
        nets.append(('flow', VideoClassifier(args.flow_model, args.flow_weights, args.clip_length,
                                             args.clip_stride, args.batch_clips)))
    results = {}
    for kind, clf in nets:
        vids = _videos_for(kind, rgb, flow)
        results[kind] = clf.classify_many(vids) if len(set(len(v) for v in vids)) == 1 else \
            tuple(np.stack(x) for x in zip(*[(r['clip_probs'], r['video_probs'])
                                             for r in map(clf.classify, vids)]))
    if len(nets) == 2:
        first = nets[0][0]
        if first == 'flow':
            raise MinicaffeError('for fusion, --model is the RGB net (--input-kind rgb)')
        vp = fuse(results['rgb'][1], results['flow'][1], args.flow_weight)
        cp = fuse(results['rgb'][0], results['flow'][0], args.flow_weight)
        label = 'fusion (%.2f rgb / %.2f flow)' % (1 - args.flow_weight, args.flow_weight)
    else:
        cp, vp = results[nets[0][0]]
        label = nets[0][0]

    def name(k):
        return classes[k] if classes and k < len(classes) else str(k)

    out = []
    for i, n in enumerate(names):
        k = int(vp[i].argmax())
        line = '%s: %s (%.3f)' % (n, name(k), vp[i][k])
        if labels is not None:
            line += '  true: %s' % name(int(labels[i]))
        print(line)
        if args.clips:
            for j, c in enumerate(cp[i]):
                kk = int(c.argmax())
                print('  clip %d: %s (%.3f)' % (j, name(kk), c[kk]))
        out.append(dict(video=n, prediction=name(k), video_probs=[float(x) for x in vp[i]],
                        clip_predictions=[name(int(c.argmax())) for c in cp[i]],
                        clip_probs=[[float(x) for x in c] for c in cp[i]]))
    if labels is not None:
        print('%s: video accuracy %.4f, clip accuracy %.4f over %d videos'
              % (label, accuracy(vp, labels), accuracy(cp, np.repeat(labels, cp.shape[1])), len(names)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=label, videos=out), f, indent=1)
    return 0
