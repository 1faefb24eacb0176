"""Dense optical flow in NumPy (pyramidal Lucas-Kanade) and LRCN-style flow images.

``lucas_kanade(prev, next)`` estimates, for every pixel p of ``prev``, the
displacement f(p) = (u, v) in pixels (u along x = columns, v along y = rows,
y pointing down) such that ``next(p + f(p)) ~ prev(p)``: an object moving right
by one pixel between the two frames gets u = +1.  Method: Gaussian pre-blur,
an image pyramid (2x2 averages), and on each level from coarse to fine a few
Gauss-Newton steps of Lucas-Kanade: warp ``next`` by the current flow
(bilinear), then solve, per pixel, the 2x2 normal equations of the brightness
constancy Ix u + Iy v + It = 0 summed over a square window (Tikhonov
regularized, so flat regions get ~0 flow instead of noise).  Everything is
vectorized over a batch of frame pairs: arrays are (B, H, W).

``flow_to_image(flow)`` stores flow as LRCN stores its flow frames: an 8-bit
3-channel image with x flow and y flow centred at 128 (128 + scale * flow,
clipped to 0..255) in channels 0 and 1 and the flow magnitude (scale * |f|,
clipped) in channel 2.
"""
import numpy as np

FLOW_SCALE = 32.0     # image units per pixel of displacement (|flow| <= 4 px fits 0..255)


def _blur(img, sigma, mode='edge'):
    """Separable Gaussian blur over the last two axes (padding: np.pad mode)."""
    if sigma <= 0:
        return img
    r = max(1, int(round(2.5 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (-1, -2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode=mode)
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def _box(img, r, mode='edge'):
    """Sum over a (2r+1) x (2r+1) window via cumulative sums (padding: np.pad mode)."""
    p = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(r + 1, r), (r + 1, r)], mode=mode)
    c = p.cumsum(-1).cumsum(-2)
    w = 2 * r + 1
    return c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]


def _grad(img, mode='edge'):
    """Central differences along x (columns) and y (rows); at the border one-sided
    ('edge') or across it ('wrap')."""
    if mode == 'wrap':
        return (0.5 * (np.roll(img, -1, -1) - np.roll(img, 1, -1)),
                0.5 * (np.roll(img, -1, -2) - np.roll(img, 1, -2)))
    return np.gradient(img, axis=-1), np.gradient(img, axis=-2)


def warp(img, u, v, mode='edge'):
    """Bilinear sample img (B, H, W) at (y + v, x + u); coordinates outside are clamped
    to the image ('edge') or taken modulo its size ('wrap')."""
    b, h, w = img.shape
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                         indexing='ij')
    if mode == 'wrap':
        x = np.mod(xs + u, w)
        y = np.mod(ys + v, h)
        x0 = np.floor(x).astype(np.int64) % w
        y0 = np.floor(y).astype(np.int64) % h
        fx, fy = x - np.floor(x), y - np.floor(y)
        x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    else:
        x = np.clip(xs + u, 0, w - 1)
        y = np.clip(ys + v, 0, h - 1)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
        fx, fy = x - x0, y - y0
        x1, y1 = x0 + 1, y0 + 1
    base = (np.arange(b) * h * w)[:, None, None]
    flat = img.reshape(-1)
    a, bb = flat[base + y0 * w + x0], flat[base + y0 * w + x1]
    c, d = flat[base + y1 * w + x0], flat[base + y1 * w + x1]
    return ((1 - fy) * ((1 - fx) * a + fx * bb) + fy * ((1 - fx) * c + fx * d)).astype(np.float32)


def _down(img):
    h, w = img.shape[-2] // 2 * 2, img.shape[-1] // 2 * 2
    i = img[..., :h, :w]
    return 0.25 * (i[..., 0::2, 0::2] + i[..., 1::2, 0::2] + i[..., 0::2, 1::2] + i[..., 1::2, 1::2])


def _up(f, shape):
    """Nearest upsampling of a flow component to ``shape`` (values doubled by the caller)."""
    out = f.repeat(2, axis=-2).repeat(2, axis=-1)
    h, w = shape
    out = out[..., :h, :w]
    if out.shape[-2] < h or out.shape[-1] < w:
        out = np.pad(out, [(0, 0), (0, h - out.shape[-2]), (0, w - out.shape[-1])], mode='edge')
    return out


def lucas_kanade(prev, nxt, levels=2, window=2, iterations=3, sigma=1.0, reg=1e-3, value_range=None,
                 boundary='edge'):
    """Dense flow from ``prev`` to ``nxt`` (both (B, H, W) or (H, W), any scale).

    Returns (u, v), each shaped like the inputs, in pixels (see the module doc).
    ``window`` is the half-width of the summing window, ``reg`` the Tikhonov term
    added to the diagonal of the 2x2 systems (relative to the images' squared
    intensity range, ``value_range``: default the inputs' max - min).  ``boundary``:
    'edge' (clamp at the border) or 'wrap' (the frames are periodic, a torus)."""
    prev = np.asarray(prev, np.float32)
    nxt = np.asarray(nxt, np.float32)
    single = prev.ndim == 2
    if single:
        prev, nxt = prev[None], nxt[None]
    if prev.shape != nxt.shape or prev.ndim != 3:
        raise ValueError('lucas_kanade needs two (B, H, W) arrays of the same shape, got %s and %s'
                         % (prev.shape, nxt.shape))
    rng = float(value_range or max(prev.max() - prev.min(), nxt.max() - nxt.min(), 1e-6))
    if boundary not in ('edge', 'wrap'):
        raise ValueError("boundary must be 'edge' or 'wrap', got %r" % (boundary,))
    m = boundary
    p1 = [_blur(prev / rng, sigma, m)]
    p2 = [_blur(nxt / rng, sigma, m)]
    for _ in range(levels - 1):
        if min(p1[-1].shape[-2:]) < 8:
            break
        p1.append(_down(p1[-1]))
        p2.append(_down(p2[-1]))
    u = np.zeros_like(p1[-1])
    v = np.zeros_like(p1[-1])
    for lvl in range(len(p1) - 1, -1, -1):
        a, b = p1[lvl], p2[lvl]
        if u.shape != a.shape:
            u = 2 * _up(u, a.shape[-2:])
            v = 2 * _up(v, a.shape[-2:])
        for _ in range(iterations):
            bw = warp(b, u, v, m)
            ix, iy = _grad(0.5 * (a + bw), m)
            it = bw - a
            a11 = _box(ix * ix, window, m) + reg
            a12 = _box(ix * iy, window, m)
            a22 = _box(iy * iy, window, m) + reg
            b1 = -_box(ix * it, window, m)
            b2 = -_box(iy * it, window, m)
            det = a11 * a22 - a12 * a12
            du = (a22 * b1 - a12 * b2) / det
            dv = (a11 * b2 - a12 * b1) / det
            u = u + np.clip(du, -2, 2)
            v = v + np.clip(dv, -2, 2)
    u, v = u.astype(np.float32), v.astype(np.float32)
    return (u[0], v[0]) if single else (u, v)


def flow_to_image(u, v, scale=FLOW_SCALE):
    """(..., H, W) flow components -> (..., 3, H, W) uint8 LRCN flow image."""
    mag = np.sqrt(u * u + v * v)
    img = np.stack([128.0 + scale * u, 128.0 + scale * v, scale * mag], axis=-3)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_to_flow(img, scale=FLOW_SCALE):
    """Inverse of :func:`flow_to_image` (up to clipping and rounding): (u, v)."""
    img = np.asarray(img, np.float32)
    return (img[..., 0, :, :] - 128.0) / scale, (img[..., 1, :, :] - 128.0) / scale


def frames_to_flow_images(frames, scale=FLOW_SCALE, **kw):
    """Flow images between consecutive frames.

    frames: (..., F, C, H, W) (any numeric type; channels averaged to gray)
    returns (..., F - 1, 3, H, W) uint8: image k is the flow from frame k to k + 1."""
    frames = np.asarray(frames)
    lead = frames.shape[:-4]
    f, _, h, w = frames.shape[-4:]
    gray = frames.astype(np.float32).mean(axis=-3).reshape((-1, f, h, w))
    prev = gray[:, :-1].reshape(-1, h, w)
    nxt = gray[:, 1:].reshape(-1, h, w)
    if frames.dtype == np.uint8:
        kw.setdefault('value_range', 255.0)
    u, v = lucas_kanade(prev, nxt, **kw)
    img = flow_to_image(u, v, scale)
    return img.reshape(lead + (f - 1, 3, h, w))
