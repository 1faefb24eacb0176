"""Side by side: how many nets minicaffe's ONNX export and caffe2onnx (PyPI)
turn into a model that ONNX Runtime loads and that matches minicaffe's forward.

The nets: every case of ../shared/conformance (layers/, nets/; their inputs and
parameters), the LRCN deploy nets of prototxt/lrcn and the upstream zoo nets
(random weights).  Each is saved as prototxt + .caffemodel and given to both
converters; a model "matches" when every net output agrees with minicaffe at
the conformance tolerance.

caffe2onnx is not a dependency.  Install it beside the current onnx, e.g.
    pip install --no-deps --target /tmp/c2o caffe2onnx
and run (it converts in a subprocess, with the pure-Python protobuf its
generated code needs; its caffe.proto would clash with ours in one process):
    python tools/onnx_vs_caffe2onnx.py --caffe2onnx-path /tmp/c2o [--large] [--markdown]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))

import minicaffe as caffe  # noqa: E402
import minicaffe.onnx as mo  # noqa: E402
from conformance import CONFORMANCE, _prototxt_tops, case_dirs, h5name, mismatch  # noqa: E402
from minicaffe.errors import MinicaffeError  # noqa: E402

CONVERT = r'''
import json, sys, traceback, io, contextlib
from caffe2onnx.src.load_save_model import loadcaffemodel
from caffe2onnx.src.caffe2onnx import Caffe2Onnx
from caffe2onnx.src.utils import freeze
import onnx
out = {}
for name, proto, weights, dst in json.load(open(sys.argv[1])):
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            graph, params = loadcaffemodel(proto, weights)
            model = Caffe2Onnx(graph, params, dst).createOnnxModel()
            freeze(model)
        onnx.save_model(model, dst)
        out[name] = None
    except BaseException as e:      # caffe2onnx calls exit() on layers it does not know
        lines = [l for l in log.getvalue().splitlines() if l.strip()]
        why = str(e).splitlines()[0][:160] if str(e) else ''
        if isinstance(e, SystemExit) and lines:
            why = lines[-1][:160]
        out[name] = '%s: %s' % (type(e).__name__, why)
json.dump(out, open(sys.argv[2], 'w'))
'''


def random_inputs(net, rng, ints):
    feeds = {}
    for name in net.inputs:
        shape = net.blobs[name].shape
        if name.startswith('cont'):
            v = (rng.uniform(size=shape) > 0.3).astype(np.float32)
            v[0] = 0
        elif name in ints:
            v = rng.randint(0, ints[name], size=shape).astype(np.float32)
        else:
            v = rng.uniform(-1, 1, size=shape).astype(np.float32)
        feeds[name] = v
    return feeds


def conformance_nets():
    for case in case_dirs('layers') + case_dirs('nets'):
        ref = h5py.File(case / 'ref.h5', 'r')
        phase = caffe.TRAIN if ref.attrs['phase'] == 'TRAIN' else caffe.TEST
        net = caffe.Net(str(case / 'net.prototxt'), phase, stages=json.loads(ref.attrs.get('stages', '[]')))
        for lkey in ref.get('param', {}):
            for i in ref['param'][lkey]:
                net.params[h5name(lkey)][int(i)].data[...] = ref['param'][lkey][i][()]
        feeds = {h5name(k): ref['input'][k][()].astype(np.float32) for k in ref['input']}
        named = _prototxt_tops(case / 'net.prototxt')
        yield case.name, case / 'net.prototxt', net, feeds, [n for n in net.outputs if n in named]


def deploy_nets(large):
    lrcn = ROOT / 'prototxt' / 'lrcn'
    nets = [('caption/image_to_feature.deploy.prototxt', []),
            ('caption/lrcn_word_to_preds.deploy.prototxt', ['factored', '2-layer']),
            ('caption/lrcn_word_to_preds.deploy.prototxt', ['unfactored']),
            ('caption/lstm_lm.deploy.prototxt', []),
            ('video_description/svo_word_to_preds.deploy.prototxt', []),
            ('activity/deploy_lstm.prototxt', []),
            ('activity/deploy_singleFrame.prototxt', [])]
    up = CONFORMANCE / 'upstream'
    shapes = json.loads((up / 'shapes.json').read_text())
    skip = set() if large else {'lisa-caffe-public__examples__LRCN_activity_recognition__deploy_lstm.prototxt',
                                'lisa-caffe-public__examples__LRCN_activity_recognition__deploy_singleFrame.prototxt'}
    items = [(lrcn / p, s) for p, s in nets] + [(up / n, []) for n, v in sorted(shapes.items())
                                                if 'caffe_error' not in v and n not in skip]
    rng = np.random.RandomState(5)
    for path, stages in items:
        net = caffe.Net(str(path), caffe.TEST, stages=stages)
        for blobs in net.params.values():
            for b in blobs:
                fan_in = int(np.prod(b.shape[1:])) if len(b.shape) > 1 else 1
                b.data[...] = rng.normal(0, 1 / np.sqrt(fan_in) if len(b.shape) > 1 else 0.1, b.shape)
        vocab = {t: l.layer_param.embed_param.input_dim for l in net.layers if l.type == 'Embed'
                 for t in l.layer_param.bottom}
        name = path.name + ('[%s]' % ','.join(stages) if stages else '')
        yield name, path, net, random_inputs(net, rng, vocab), list(net.outputs)


def flat_prototxt(net, path, dst):
    """The prototxt as written, less the layers the net's state leaves out and
    the include/exclude rules (caffe2onnx knows no stages)."""
    text = path.read_text()
    from google.protobuf import text_format
    from minicaffe.protoio import pb, read_text
    p = read_text(path, pb.NetParameter)
    if not any(r.stage or r.not_stage for l in p.layer for r in list(l.include) + list(l.exclude)):
        dst.write_text(text)
        return
    kept = set(net._layer_names)
    layers = [l for l in p.layer if l.name in kept]
    del p.layer[:]
    for l in layers:
        q = p.layer.add()
        q.CopyFrom(l)
        del q.include[:]
        del q.exclude[:]
    dst.write_text(text_format.MessageToString(p))


def loads(model_bytes):
    """None when ONNX Runtime accepts the model, else why not."""
    import onnxruntime as ort
    try:
        ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    except Exception as e:
        return 'ONNX Runtime refuses it: ' + str(e).split('\n')[0][:160]
    return None


def compare(model_bytes, net, feeds, outputs, positional=False):
    """None when ORT runs the model and all outputs match, else why not."""
    import onnxruntime as ort
    try:
        sess = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    except Exception as e:
        return 'ONNX Runtime refuses it: ' + str(e).split('\n')[0][:160]
    ins = [i.name for i in sess.get_inputs()]
    if positional:
        if len(ins) != len(feeds):
            return 'has %d inputs for the net\'s %d' % (len(ins), len(feeds))
        run_feeds = dict(zip(ins, [feeds[n] for n in net.inputs]))
    else:
        run_feeds = feeds
    try:
        got = sess.run(None, run_feeds)
    except Exception as e:
        return 'ONNX Runtime fails running it: ' + str(e).split('\n')[0][:160]
    names = [o.name for o in sess.get_outputs()]
    for want in outputs:
        ref = net.blobs[want].data
        cands = [g for n, g in zip(names, got) if n == want] or \
                [g for g in got if np.shape(g) == ref.shape or np.size(g) == ref.size]
        if not cands:
            return 'no output for "%s"' % want
        if all(mismatch(np.reshape(g, ref.shape) if np.size(g) == ref.size else g, ref) for g in cands):
            return 'output "%s" differs: %s' % (want, mismatch(np.reshape(cands[0], ref.shape)
                                                               if np.size(cands[0]) == ref.size
                                                               else cands[0], ref))
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--caffe2onnx-path', default=None, help='where caffe2onnx is installed')
    ap.add_argument('--large', action='store_true', help='also the two LRCN activity zoo nets')
    ap.add_argument('--markdown', action='store_true', help='per-net table in Markdown')
    ap.add_argument('--only', nargs='+', default=None, metavar='TEXT',
                    help='only the nets whose name contains one of these')
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix='onnx_vs_c2o_'))
    rows, jobs, nets = [], [], {}
    for i, (name, path, net, feeds, outputs) in enumerate(
            list(conformance_nets()) + list(deploy_nets(args.large))):
        if args.only and not any(t in name for t in args.only):
            continue
        for k, v in feeds.items():
            net.blobs[k].reshape(v.shape)
            net.blobs[k].data[...] = v
        net.reshape()
        try:
            ours = mo.to_model(net).SerializeToString()
            ours_err = None
        except MinicaffeError as e:
            ours, ours_err = None, 'refused: ' + str(e).split('\n', 1)[-1].strip()[:160]
        net.forward()
        proto, weights, dst = work / ('%d.prototxt' % i), work / ('%d.caffemodel' % i), work / ('%d.onnx' % i)
        flat_prototxt(net, path, proto)
        net.save(str(weights))
        jobs.append((name, str(proto), str(weights), str(dst)))
        if ours is not None:
            ours_err = compare(ours, net, feeds, outputs)
        nets[name] = (net, feeds, outputs)
        rows.append([name, ours_err])
        # keep memory bounded: only the small nets stay for caffe2onnx's comparison
        if sum(b.count for bl in net.params.values() for b in bl) > 5e6:
            nets[name] = (None, None, None)
    (work / 'jobs.json').write_text(json.dumps(jobs))
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION='python')
    if args.caffe2onnx_path:
        env['PYTHONPATH'] = args.caffe2onnx_path + os.pathsep + env.get('PYTHONPATH', '')
    r = subprocess.run([sys.executable, '-c', CONVERT, str(work / 'jobs.json'), str(work / 'done.json')],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit('caffe2onnx failed to run:\n' + r.stderr[-2000:])
    done = json.loads((work / 'done.json').read_text())
    for row, (name, proto, weights, dst) in zip(rows, jobs):
        err = done.get(name)
        if err is None:
            net, feeds, outputs = nets[name]
            if net is None:   # a large net, not kept in memory: whether ORT loads it
                err = loads(Path(dst).read_bytes())
                err = err or 'loads (outputs not compared: the net was not kept in memory)'
            else:
                err = compare(Path(dst).read_bytes(), net, feeds, outputs, positional=True)
        else:
            err = 'conversion fails: ' + err
        row.append(err)
    total = len(rows)
    ours_ok = sum(r[1] is None for r in rows)
    c2o_ok = sum(r[2] is None for r in rows)  # (a large net that loads is not counted as a match)
    c2o_conv = sum(not (r[2] or '').startswith('conversion fails') for r in rows)
    c2o_load = sum(not (r[2] or '').startswith(('conversion fails', 'ONNX Runtime refuses')) for r in rows)
    if args.markdown:
        print('| net | minicaffe | caffe2onnx |\n| --- | --- | --- |')
        for name, a, b in rows:
            print('| %s | %s | %s |' % (name, a or 'matches', b or 'matches'))
    else:
        for name, a, b in rows:
            print('%-60s minicaffe: %-10s caffe2onnx: %s' % (name, a or 'matches', b or 'matches'))
    print('\n%d nets.  minicaffe: %d match.  caffe2onnx: %d converted, %d load in ONNX Runtime, %d match.'
          % (total, ours_ok, c2o_conv, c2o_load, c2o_ok))
    return 0


if __name__ == '__main__':
    sys.exit(main())
