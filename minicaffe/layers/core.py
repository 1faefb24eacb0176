"""Structural layers: Input, Split, Silence.

Input   (no bottoms) -> tops shaped by input_param.shape (one shape for all
        tops, or one per top); values are written by the user.
Split   x -> y_1..y_k, each y_i = x;  backward dx = sum_i dy_i (also on the device:
        forward_gpu/backward_gpu).
Silence consumes bottoms, produces nothing; backward writes zero diffs.
"""
import numpy as np

from .base import Layer, register_layer


@register_layer('Input')
class InputLayer(Layer):
    static_reshape = True
    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        n = len(shapes)
        self.check(n in (0, 1, len(top)),
                   'input_param.shape must be given 0, 1 or %d times (once per top), got %d'
                   % (len(top), n))
        for i, t in enumerate(top):
            if n:
                t.reshape(tuple(shapes[0 if n == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # the user reshapes input blobs

    def forward(self, bottom, top):
        pass


@register_layer('Split')
class SplitLayer(Layer):
    supports_in_place = True
    static_reshape = True
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        for t in top:
            if t is not bottom[0]:
                t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        acc = top[0].diff.copy() if top[0] is not bottom[0] else top[0].diff
        for t in top[1:]:
            acc += t.diff
        bottom[0].diff[...] = acc

    def forward_gpu(self, bottom, top):
        """Device copies of x into every top that is not x itself."""
        for t in top:
            if t is not bottom[0]:
                t.gpu_data[...] = bottom[0].gpu_data

    def backward_gpu(self, top, propagate_down, bottom):
        """dx = dy_1 + dy_2 + ... on the device, added in the CPU's order."""
        if not propagate_down[0]:
            return
        dx = bottom[0].gpu_diff
        if top[0] is not bottom[0]:
            dx[...] = top[0].gpu_diff
        for t in top[1:]:
            dx += t.gpu_diff


@register_layer('Silence')
class SilenceLayer(Layer):
    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for p, b in zip(propagate_down, bottom):
            if p:
                b.diff[...] = 0
