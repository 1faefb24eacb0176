#!/usr/bin/env python
"""Fuzz minicaffe's readers of user files; print how many cases ran and how
many ended outside minicaffe's error types.

    python tools/fuzz.py [--cases 4000] [--seed 1] [--target NAME ...] [--timeout 20]

Targets (each mutates real files and feeds them to the public API):
  net_prototxt     upstream net prototxts (../shared/conformance/upstream) with
                   tokens deleted, duplicated, swapped or altered, wrong types,
                   missing bottoms, cycles, huge dims; built in TEST and TRAIN
                   (and run forward once when small)
  conformance_net  the conformance suite's nets (LeNet, CIFAR-10, LRCN; Input
                   layers), mutated the same way, built with their phase and
                   stages, run forward and backward
  solver_prototxt  upstream solver prototxts, mutated the same way, built
  caffemodel       Caffe-written .caffemodel files, truncated / bit-flipped,
                   decoded and loaded into their net (when it builds here)
  caffemodel_tiny  a minicaffe-written .caffemodel, corrupted, loaded
  solverstate      .solverstate files (Caffe's, and minicaffe's for a small
                   Adam solver), corrupted, restored into a solver
  solverstate_h5   HDF5 solver states, corrupted, restored
  case_solverstate Caffe's .solverstate of each conformance solver case,
                   corrupted, restored into that case's own solver (its
                   learned_net beside it)
  weights_h5       HDF5 weights, corrupted, loaded into a net
  hdf5_data        HDF5Data sources (.h5), corrupted, read by a net
  mean_file        mean .binaryproto files, corrupted, used by a data layer
  image            PNG/JPEG images, corrupted, read by an ImageData net
  lmdb_datum       Datum records, corrupted, read by a Data net
  data_prototxt    ImageData / WindowData / Data layers with real sources,
                   their prototxt mutated, built and run forward twice
  shipped_prototxt the nets and solvers this project ships (prototxt/),
                   mutated, built (nets: TEST and TRAIN, forward when small)

    python tools/fuzz.py --isolate [--cases 300] [--workers 2] [--mem-mb 3072]

runs every case in a worker subprocess (many cases per worker) under an
address-space limit (RLIMIT_AS) and a timeout: a crash (a signal), a hang
the alarm cannot interrupt, a MemoryError (a blow-up) or a traceback
printed by any thread counts as a failure, and the next worker goes on
with the case after it.  tests/test_fuzz.py runs a bounded, seeded set of
cases this way in CI.

Every case must either succeed or raise a MinicaffeError whose message names
the file; "escaped" counts any other exception, "unnamed" errors that do not
name the file, "hang" cases over the time limit ("crash": the worker died).
Exit status 1 when any escaped, hung, crashed or went unnamed.
"""
import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import sys
import subprocess
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minicaffe as caffe  # noqa: E402
from minicaffe import blob as _blob  # noqa: E402
from minicaffe.errors import MinicaffeError  # noqa: E402
from minicaffe.protoio import pb, read_binary, blob_proto_array  # noqa: E402

CONFORMANCE = Path(os.environ.get('MINICAFFE_CONFORMANCE', ROOT.parent / 'shared' / 'conformance'))
UPSTREAM = CONFORMANCE / 'upstream'

# Fuzzed shapes must be refused before they allocate: blobs are capped far
# below what a test machine holds.
FUZZ_MAX_BLOB_BYTES = 64 << 20
# Data layers do real work per item: a fuzzed batch_size of 100000 is legitimate
# but slow, so their batches are capped harder.
DATA_MAX_BLOB_BYTES = 2 << 20
SMALL_NET_COUNT = 1 << 20          # run forward only on nets with fewer values than this


# ================================================================ mutators
TOKEN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*'
                      r'|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\s+|.', re.S)
NUMBERS = ['0', '-1', '1', '2', '3', '-7', '4294967296', '2147483647', '-2147483648', '1e38', '-1e38',
           'nan', 'inf', '0.5', '1000000', '100000000', '65536', '99999999999999999999', '1.5e-45']
WORDS = ['TRAIN', 'TEST', 'MAX', 'AVE', 'LMDB', 'LEVELDB', 'true', 'false', 'layer', 'layers', 'bottom',
         'top', 'name', 'type', 'param', 'include', 'exclude', 'phase', 'stage', 'dim', 'shape',
         'num_output', 'kernel_size', 'stride', 'pad', 'axis', 'lr_mult', 'loss_weight', 'blobs',
         'input', 'input_dim', 'convolution_param', 'recurrent_param', 'slice_point', 'Input']
TEXT_OPS = ('delete', 'duplicate', 'swap', 'number', 'word', 'string', 'insert', 'truncate',
            'dup_block', 'del_block', 'cycle', 'huge_dim', 'rename_bottom')


def tokens(text):
    return TOKEN_RE.findall(text)


def _meaningful(toks):
    return [i for i, t in enumerate(toks) if not t.isspace() and not t.startswith('#')]


def _blocks(text):
    """(start, end) of each top-level `layer {...}` / `layers {...}` block."""
    out = []
    for m in re.finditer(r'(?m)^\s*layers?\s*\{', text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == '{':
                depth += 1
            elif text[i] == '}':
                depth -= 1
                if depth == 0:
                    out.append((m.start(), i + 1))
                    break
            i += 1
    return out


def apply_text_op(text, op, seed):
    r = random.Random(seed)
    toks = tokens(text)
    idx = _meaningful(toks)
    if not idx:
        return text
    i = r.choice(idx)
    if op == 'delete':
        toks[i] = ''
    elif op == 'duplicate':
        toks[i] = toks[i] + ' ' + toks[i]
    elif op == 'swap':
        j = r.choice(idx)
        toks[i], toks[j] = toks[j], toks[i]
    elif op == 'number':
        nums = [k for k in idx if re.match(r'-?\d', toks[k])] or idx
        toks[r.choice(nums)] = r.choice(NUMBERS)
    elif op == 'word':
        words = [k for k in idx if re.match(r'[A-Za-z_]', toks[k])] or idx
        toks[r.choice(words)] = r.choice(WORDS + [toks[k] for k in words])
    elif op == 'string':
        strs = [k for k in idx if toks[k].startswith('"')] or idx
        k = r.choice(strs)
        toks[k] = r.choice([toks[s] for s in strs] + ['""', '"x"', '"../../../etc/passwd"', '"\\377"'])
    elif op == 'insert':
        toks[i] = r.choice(['{', '}', ':', '"', '[', ']', '<', '>', ';', '\x00', '\u00e9']) + toks[i]
    elif op == 'truncate':
        return text[:r.randrange(len(text) + 1)]
    elif op in ('dup_block', 'del_block'):
        blocks = _blocks(text)
        if not blocks:
            return text
        a, b = r.choice(blocks)
        return text[:b] + '\n' + text[a:b] + text[b:] if op == 'dup_block' else text[:a] + text[b:]
    elif op == 'cycle':
        # a layer reads a blob produced later (or by itself)
        tops = re.findall(r'top\s*:\s*("[^"]*")', text)
        if not tops:
            return text
        return re.sub(r'bottom\s*:\s*"[^"]*"', 'bottom: %s' % r.choice(tops), text, count=1)
    elif op == 'huge_dim':
        return re.sub(r'(dim|num_output|input_dim|batch_size|kernel_size)\s*:\s*\d+',
                      lambda m: '%s: %s' % (m.group(1), r.choice(['2000000000', '100000', '46341', '0'])),
                      text, count=r.randint(1, 3))
    elif op == 'rename_bottom':
        return re.sub(r'bottom\s*:\s*"[^"]*"', 'bottom: "no_such_blob"', text, count=1)
    return ''.join(toks)


def mutate_text(text, ops):
    for op, seed in ops:
        text = apply_text_op(text, op, seed)
    return text


BYTE_OPS = ('truncate', 'flip', 'overwrite', 'zero', 'dup_chunk', 'insert', 'varint')


def apply_byte_op(data, op, seed):
    r = random.Random(seed)
    b = bytearray(data)
    if not b:
        return bytes([r.randrange(256)])
    i = r.randrange(len(b))
    if op == 'truncate':
        return bytes(b[:i])
    if op == 'flip':
        for _ in range(r.randint(1, 8)):
            k = r.randrange(len(b))
            b[k] ^= 1 << r.randrange(8)
    elif op == 'overwrite':
        n = r.randint(1, 16)
        b[i:i + n] = bytes(r.randrange(256) for _ in range(n))
    elif op == 'zero':
        n = r.randint(1, 64)
        b[i:i + n] = bytes(len(b[i:i + n]))
    elif op == 'dup_chunk':
        n = r.randint(1, 64)
        b[i:i] = b[i:i + n]
    elif op == 'insert':
        b[i:i] = bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
    elif op == 'varint':
        # a huge length prefix or field value
        b[i:i + 1] = bytes([0xff] * r.randint(1, 9) + [0x7f])
    return bytes(b)


def mutate_bytes(data, ops):
    for op, seed in ops:
        data = apply_byte_op(data, op, seed)
    return data


# ================================================================ outcomes
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def classify(exc, path):
    """'ok', 'error' (a minicaffe error naming the file), 'unnamed', 'escaped' or 'hang'."""
    if exc is None:
        return 'ok'
    if isinstance(exc, Hang):
        return 'hang'
    if not isinstance(exc, MinicaffeError):
        return 'escaped'
    msg = str(exc)
    names = {os.fspath(path), os.path.basename(os.fspath(path))}
    return 'error' if any(n and n in msg for n in names) else 'unnamed'


# ================================================================ targets
class Target(object):
    """seeds: [(file name, bytes)]; run(path, workdir) exercises one mutated file."""

    def __init__(self, name, kind, seeds, run, depth='', max_blob_bytes=None):
        self.name, self.kind, self.seeds, self.run, self.depth = name, kind, seeds, run, depth
        self.max_blob_bytes = max_blob_bytes or FUZZ_MAX_BLOB_BYTES


def _net_files():
    return sorted(p for p in UPSTREAM.glob('*.prototxt') if not _is_solver(p)) if UPSTREAM.is_dir() else []


def _solver_files():
    return sorted(p for p in UPSTREAM.glob('*.prototxt') if _is_solver(p)) if UPSTREAM.is_dir() else []


def _is_solver(p):
    return p.name.endswith('solver.prototxt') or '_solver_' in p.name


def _total_count(net):
    return sum(b.count for b in net.blobs.values()) + sum(b.count for bl in net.params.values() for b in bl)


def run_net_prototxt(path, workdir):
    for phase in (caffe.TEST, caffe.TRAIN):
        net = caffe.Net(str(path), phase)
        if _total_count(net) < SMALL_NET_COUNT and not _has_data_layer(net):
            net.forward()


def _has_data_layer(net):
    return any(l.type in ('Data', 'ImageData', 'WindowData', 'HDF5Data', 'Python', 'MemoryData')
               for l in net.layers)


def run_solver_prototxt(path, workdir):
    caffe.get_solver(str(path))


SHIPPED = ROOT / 'prototxt'


def _shipped_files():
    """The project's own nets and solvers; net paths inside solvers made absolute
    (a mutated solver runs in a scratch folder)."""
    out = []
    for p in sorted(SHIPPED.rglob('*.prototxt')) if SHIPPED.is_dir() else []:
        text = p.read_text(encoding='utf-8', errors='surrogateescape')
        text = re.sub(r'((?:train_|test_)?net\s*:\s*")(prototxt/)', lambda m: m.group(1) + str(ROOT) + '/'
                      + m.group(2), text)
        out.append((str(p.relative_to(SHIPPED)).replace(os.sep, '__'),
                    text.encode('utf-8', errors='surrogateescape')))
    return out


def run_shipped_prototxt(path, workdir):
    if _is_solver(Path(str(path).replace('.mut.', '.'))):
        caffe.get_solver(str(path))
    else:
        run_net_prototxt(path, workdir)


def _layer_available(type_name):
    from minicaffe.layers.base import layer_type_list
    return type_name in layer_type_list()


def _weights_available():
    try:
        import minicaffe.weights  # noqa: F401
        return True
    except ImportError:
        return False


def _solver_cases():
    d = CONFORMANCE / 'solvers'
    return sorted(p for p in d.iterdir() if (p / 'solver.prototxt').exists()) if d.is_dir() else []


def _try_net(prototxt, phase=caffe.TRAIN):
    old = os.getcwd()
    try:
        os.chdir(str(Path(prototxt).parent))      # its data sources are relative to it
        return caffe.Net(str(prototxt), phase)
    except Exception:
        return None
    finally:
        os.chdir(old)


def _case_solver(case_dir, workdir):
    """The conformance case's solver, built from its folder (its data sources are
    relative to it) with the snapshot prefix moved into ``workdir`` (the case
    folder is read-only); None where it does not build here."""
    from minicaffe.solvers import read_solver_param
    old = os.getcwd()
    try:
        param = read_solver_param(str(case_dir / 'solver.prototxt'))
        param.snapshot_prefix = str(Path(workdir) / ('%s_snap' % case_dir.name))
        if param.net and not os.path.isabs(param.net):
            param.net = str(case_dir / param.net)
        os.chdir(str(case_dir))
        return caffe.get_solver(param)
    except Exception:
        return None
    finally:
        os.chdir(old)


TINY_NET = '''name: "tiny"
layer { name: "w1" type: "Parameter" top: "w1" parameter_param { shape { dim: 3 dim: 4 } } }
layer { name: "w2" type: "Parameter" top: "w2" parameter_param { shape { dim: 5 } } }
'''


def tiny_solver(workdir, solver_type='Adam'):
    sp = pb.SolverParameter(type=solver_type, base_lr=0.1, momentum=0.9, lr_policy='fixed',
                            snapshot_prefix=str(Path(workdir) / 'tiny'))
    from google.protobuf import text_format
    text_format.Merge(TINY_NET, sp.net_param)
    return caffe.get_solver(sp) if hasattr(caffe, 'get_solver') else None


def build_targets(workdir):
    """The targets and their seed files (created under ``workdir`` where needed)."""
    workdir = Path(workdir)
    targets = []
    nets = [(p.name, p.read_bytes()) for p in _net_files()]
    if nets:
        targets.append(Target('net_prototxt', 'text', nets, run_net_prototxt, 'parse + build TEST/TRAIN'))
    # ---- the conformance nets (data layers replaced by Input): build, forward, backward
    conf = {}
    cdir = CONFORMANCE / 'nets'
    if cdir.is_dir():
        import json
        import h5py
        for d in sorted(cdir.iterdir()):
            if (d / 'net.prototxt').exists() and (d / 'ref.h5').exists():
                with h5py.File(str(d / 'ref.h5'), 'r') as f:
                    phase = str(f.attrs.get('phase', 'TEST'))
                    stages = json.loads(str(f.attrs.get('stages', '[]')))
                conf[d.name + '.prototxt'] = ((d / 'net.prototxt').read_bytes(), phase, stages)

    def run_conformance_net(path, wd):
        _, phase, stages = conf[Path(path).name.replace('.mut.', '.')]
        net = caffe.Net(str(path), caffe.TRAIN if phase == 'TRAIN' else caffe.TEST, stages=stages)
        if _total_count(net) < SMALL_NET_COUNT:
            for name in net.inputs:
                net.blobs[name].data[...] = np.random.default_rng(0).integers(
                    0, 3, net.blobs[name].shape)
            net.forward()
            net.backward()
    if conf:
        targets.append(Target('conformance_net', 'text', [(n, v[0]) for n, v in conf.items()],
                              run_conformance_net, 'build + forward + backward'))

    shipped = _shipped_files()
    if shipped:
        targets.append(Target('shipped_prototxt', 'text', shipped, run_shipped_prototxt,
                              'parse + build (+ forward when small)'))
    solvers = [(p.name, p.read_bytes()) for p in _solver_files()]
    if solvers:
        targets.append(Target('solver_prototxt', 'text', solvers, run_solver_prototxt, 'parse + build'))

    # ---- caffemodels written by Caffe
    cases = _solver_cases()
    models = [(c.name + '_' + f.name, f.read_bytes(), c) for c in cases for f in sorted(c.glob('*.caffemodel'))]
    have_weights = _weights_available()
    net_for = {}
    if have_weights:
        for _, _, c in models:
            if c not in net_for:
                net_for[c] = _try_net(c / 'net.prototxt')

    def run_caffemodel(path, wd, _models={n: c for n, _, c in models}):
        msg = read_binary(str(path), pb.NetParameter, 'caffemodel')
        for lp in list(msg.layer)[:64]:
            for i, bp in enumerate(lp.blobs):
                blob_proto_array(bp, '%s layer %s blob %d' % (path, lp.name, i))
        case = _models.get(Path(path).name.replace('.mut.', '.'))
        net = net_for.get(case)
        if net is not None:
            net.copy_from(str(path))
    if models:
        depth = 'decode + copy_from' if any(net_for.values()) else 'decode (no net/weights loader here)'
        targets.append(Target('caffemodel', 'bytes', [(n, b) for n, b, _ in models], run_caffemodel, depth))

    # ---- solver states: minicaffe's own for a tiny Adam solver (+ HDF5)
    solver = None
    try:
        solver = tiny_solver(workdir)
    except Exception:
        solver = None
    if solver is not None:
        for h in solver.history:
            h[...] = np.random.default_rng(0).standard_normal(h.shape)
        # a state names its weights (learned_net; restore refuses one without)
        learned = workdir / 'tiny_iter_7.caffemodel'
        solver.net.save(str(learned))
        state = pb.SolverState(iter=7, current_step=1, learned_net=str(learned))
        for h in solver.history:
            bp = state.history.add()
            bp.shape.dim.extend(h.shape)
            bp.data.extend(h.ravel().tolist())
        seeds = [('tiny_iter_7.solverstate', state.SerializeToString())]
        if have_weights:
            # Caffe's own states name their .caffemodel (learned_net): restoring loads it
            for c in cases:
                for f in c.glob('*.solverstate'):
                    seeds.append((c.name + '_' + f.name, f.read_bytes()))

        def run_solverstate(path, wd):
            solver.restore(str(path))
        targets.append(Target('solverstate', 'bytes', seeds, run_solverstate, 'restore (tiny Adam solver)'))
        h5state = workdir / 'tiny_iter_7.solverstate.h5'
        import h5py
        with h5py.File(str(h5state), 'w') as f:
            f.create_dataset('iter', data=np.array([7], np.int32))
            f.create_dataset('learned_net', data=np.bytes_(str(learned).encode()))
            f.create_dataset('current_step', data=np.array([1], np.int32))
            g = f.create_group('history')
            for i, h in enumerate(solver.history):
                g.create_dataset(str(i), data=h)
        targets.append(Target('solverstate_h5', 'bytes', [(h5state.name, h5state.read_bytes())],
                              lambda path, wd: solver.restore(str(path)), 'restore (tiny Adam solver)'))
        if have_weights:
            mpath = workdir / 'tiny.caffemodel'
            try:
                solver.net.save(str(mpath))
                targets.append(Target('caffemodel_tiny', 'bytes', [(mpath.name, mpath.read_bytes())],
                                      lambda path, wd: solver.net.copy_from(str(path)),
                                      'copy_from (minicaffe-written, Parameter layers)'))
            except Exception:
                pass
            wpath = workdir / 'tiny.caffemodel.h5'
            try:
                solver.net.save_hdf5(str(wpath))
                targets.append(Target('weights_h5', 'bytes', [(wpath.name, wpath.read_bytes())],
                                      lambda path, wd: solver.net.copy_from(str(path)), 'copy_from'))
            except Exception:
                pass

    # ---- Caffe's solver states restored into the solver that wrote them (its
    # type, net and learned_net), so that mutations reach the history checks
    case_solvers = {}
    for c in cases:
        state = sorted(c.glob('*.solverstate'))
        if state and have_weights:
            sv = _case_solver(c, workdir)
            if sv is not None:
                case_solvers[c.name] = (sv, c, state[0])

    def run_case_solverstate(path, wd):
        case = Path(path).name.split('__')[0]
        sv, c, state = case_solvers[case]
        folder = Path(wd) / case                    # beside the state: its learned_net
        folder.mkdir(exist_ok=True)
        for f in c.glob('*.caffemodel'):
            if not (folder / f.name).exists():
                shutil.copy(str(f), str(folder / f.name))
        target = folder / state.name
        shutil.copy(str(path), str(target))
        try:
            sv.restore(str(target))
        except MinicaffeError as e:
            raise type(e)('%s (as %s)' % (e, path)) from None
    if case_solvers:
        targets.append(Target('case_solverstate', 'bytes',
                              [('%s__%s' % (name, st.name), st.read_bytes())
                               for name, (_, _, st) in sorted(case_solvers.items())],
                              run_case_solverstate, 'restore into its own solver (+ learned_net)'))

    # ---- HDF5Data sources
    h5 = [c / 'data.h5' for c in cases if (c / 'data.h5').exists()][:1]
    if h5 and _layer_available('HDF5Data'):
        import h5py
        with h5py.File(str(h5[0]), 'r') as f:
            names = list(f.keys())

        def run_hdf5_data(path, wd):
            lst = Path(wd) / 'h5_list.txt'
            lst.write_text(str(path) + '\n')
            net_path = Path(wd) / 'h5_net.prototxt'
            net_path.write_text('layer { name: "d" type: "HDF5Data" %s hdf5_data_param { source: "%s"'
                                ' batch_size: 3 } }' % (' '.join('top: "%s"' % n for n in names), lst))
            net = caffe.Net(str(net_path), caffe.TRAIN)
            for _ in range(3):
                net.forward()
        targets.append(Target('hdf5_data', 'bytes', [('data.h5', h5[0].read_bytes())], run_hdf5_data,
                              'HDF5Data build + 3 forwards'))

    # ---- mean files, images, datums (minicaffe's data layers)
    mean = pb.BlobProto(num=1, channels=3, height=4, width=5)
    mean.data.extend(np.linspace(0, 255, 60).tolist())
    nd = pb.BlobProto()
    nd.shape.dim.extend([1, 3, 4, 5])
    nd.data.extend(np.linspace(0, 1, 60).tolist())
    from PIL import Image
    import io as _io
    img_dir = workdir / 'imgs'
    img_dir.mkdir(exist_ok=True)
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(str(img_dir / 'ok.png'))
    (workdir / 'img_list.txt').write_text('ok.png 1\n')

    def run_mean(path, wd):
        from minicaffe.transform import load_mean_file
        load_mean_file(str(path))
        net_path = Path(wd) / 'mean_net.prototxt'
        net_path.write_text('layer { name: "d" type: "ImageData" top: "d" top: "l" transform_param {'
                            ' mean_file: "%s" } image_data_param { source: "%s" root_folder: "%s/"'
                            ' batch_size: 2 } }' % (path, workdir / 'img_list.txt', img_dir))
        net = caffe.Net(str(net_path), caffe.TRAIN)
        net.forward()
    targets.append(Target('mean_file', 'bytes', [('mean.binaryproto', mean.SerializeToString()),
                                                ('mean_nd.binaryproto', nd.SerializeToString())],
                          run_mean, 'load + ImageData forward'))

    seeds = []
    for fmt, ext in (('PNG', 'png'), ('JPEG', 'jpg'), ('BMP', 'bmp'), ('GIF', 'gif')):
        buf = _io.BytesIO()
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(buf, fmt)
        seeds.append(('img.' + ext, buf.getvalue()))

    def run_image(path, wd):
        lst = Path(wd) / 'list.txt'
        lst.write_text('%s 3\n' % path)
        net_path = Path(wd) / 'img_net.prototxt'
        net_path.write_text('layer { name: "d" type: "ImageData" top: "d" top: "l"'
                            ' transform_param { crop_size: 3 mirror: true }'
                            ' image_data_param { source: "%s" batch_size: 2 } }' % lst)
        net = caffe.Net(str(net_path), caffe.TRAIN)
        net.forward()
    targets.append(Target('image', 'bytes', seeds, run_image, 'ImageData build + forward'))

    # ---- prototxts of data layers whose sources exist (mutations reach setup and forward)
    (workdir / 'windows.txt').write_text('# 0\n%s\n3\n4\n5\n2\n1 0.9 0 0 3 2\n0 0.1 1 1 4 3\n'
                                         % (img_dir / 'ok.png'))
    try:
        from minicaffe.commands.lmdb_tools import convert_imageset
        convert_imageset(str(img_dir) + '/', str(workdir / 'img_list.txt'), str(workdir / 'seed_lmdb'),
                         show_progress=False)
        have_db = True
    except Exception:
        have_db = False
    mean.ClearField('data')
    mean.data.extend([100.0] * 60)
    (workdir / 'mean.binaryproto').write_bytes(mean.SerializeToString())
    data_nets = [
        ('imagedata.prototxt', 'layer { name: "d" type: "ImageData" top: "data" top: "label"\n'
         '  transform_param { mirror: true crop_size: 3 mean_value: 104 mean_value: 117 mean_value: 123 }\n'
         '  image_data_param { source: "%s" root_folder: "%s/" batch_size: 2 new_height: 4 new_width: 5'
         ' shuffle: true is_color: true } }\n' % (workdir / 'img_list.txt', img_dir)),
        ('window.prototxt', 'layer { name: "w" type: "WindowData" top: "data" top: "label"\n'
         '  transform_param { mirror: true crop_size: 4 mean_value: 100 }\n'
         '  window_data_param { source: "%s" batch_size: 3 fg_fraction: 0.5 context_pad: 1'
         ' crop_mode: "square" } }\n' % (workdir / 'windows.txt'))]
    if have_db:
        data_nets.append(('lmdb.prototxt', 'layer { name: "d" type: "Data" top: "data" top: "label"\n'
                          '  transform_param { crop_size: 2 mean_file: "%s" scale: 0.5 }\n'
                          '  data_param { source: "%s" batch_size: 3 backend: LMDB rand_skip: 2 } }\n'
                          % (workdir / 'mean.binaryproto', workdir / 'seed_lmdb')))

    def run_data_prototxt(path, wd):
        net = caffe.Net(str(path), caffe.TRAIN)
        try:
            net.forward()
            net.forward()
        except MinicaffeError as e:
            raise type(e)('forward of %s: %s' % (path, e)) from None
    targets.append(Target('data_prototxt', 'text', [(n, t.encode()) for n, t in data_nets],
                          run_data_prototxt, 'data layers build + 2 forwards',
                          max_blob_bytes=DATA_MAX_BLOB_BYTES))

    try:
        import lmdb
    except ImportError:
        lmdb = None
    if lmdb is not None:
        d_raw = pb.Datum(channels=3, height=4, width=5, label=2, data=rgb.transpose(2, 0, 1).tobytes())
        d_float = pb.Datum(channels=1, height=2, width=2, label=1)
        d_float.float_data.extend([0.5, 1, 2, 3])
        d_enc = pb.Datum(label=4, encoded=True, data=seeds[0][1])

        def run_datum(path, wd):
            value = Path(path).read_bytes()
            db = Path(wd) / ('db_%s' % Path(path).name)
            if db.exists():
                shutil.rmtree(str(db))
            env = lmdb.open(str(db), map_size=1 << 24)
            with env.begin(write=True) as txn:
                txn.put(b'00000000_' + Path(path).name.encode(), value)
            env.close()
            net_path = Path(wd) / 'db_net.prototxt'
            net_path.write_text('layer { name: "d" type: "Data" top: "d" top: "l" data_param {'
                                ' source: "%s" batch_size: 2 backend: LMDB } }' % db)
            try:
                net = caffe.Net(str(net_path), caffe.TRAIN)
                net.forward()
            except MinicaffeError as e:
                # the record is named by its key (which holds the file name)
                raise type(e)(str(e)) from None
            finally:
                shutil.rmtree(str(db), ignore_errors=True)
        targets.append(Target('lmdb_datum', 'bytes', [('raw.datum', d_raw.SerializeToString()),
                                                     ('float.datum', d_float.SerializeToString()),
                                                     ('encoded.datum', d_enc.SerializeToString())],
                              run_datum, 'Data build + forward'))
    return targets


# ================================================================ running
def run_case(target, seed_name, data, ops, workdir, timeout=20):
    """Mutate one seed with ``ops``, run the target; returns (outcome, exception)."""
    tdir = Path(workdir) / target.name
    tdir.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = seed_name.partition('.')
    path = tdir / ('%s.mut.%s' % (stem, ext) if dot else seed_name + '.mut')
    if target.kind == 'text':
        text = data.decode('utf-8', errors='surrogateescape')
        out = mutate_text(text, ops).encode('utf-8', errors='surrogateescape')
    else:
        out = mutate_bytes(data, ops)
    path.write_bytes(out)
    exc = None
    old_cwd = os.getcwd()
    old_cap = getattr(_blob, 'MAX_BYTES', None)
    use_alarm = timeout and hasattr(signal, 'SIGALRM') and \
        __import__('threading').current_thread() is __import__('threading').main_thread()
    if old_cap is not None:
        _blob.MAX_BYTES = min(old_cap, target.max_blob_bytes)
    if use_alarm:
        prev = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(timeout))
    try:
        os.chdir(str(tdir))            # relative data sources resolve to nothing
        target.run(path, str(tdir))
    except BaseException as e:         # noqa: B902 - classified below
        if isinstance(e, KeyboardInterrupt):
            raise
        exc = e
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, prev)
        os.chdir(old_cwd)
        if old_cap is not None:
            _blob.MAX_BYTES = old_cap
    return classify(exc, path), exc, path


def random_ops(rng, kind):
    ops = TEXT_OPS if kind == 'text' else BYTE_OPS
    return [(rng.choice(ops), rng.randrange(1 << 30)) for _ in range(rng.randint(1, 4))]


# ================================================================ isolated (subprocess) runs
FAILURES = ('escaped', 'unnamed', 'hang', 'crash')


# Text edits that keep a prototxt parseable, so that a case reaches net
# construction, forward and backward instead of stopping at a parse error.
PARSEABLE_TEXT_OPS = ('number', 'string', 'dup_block', 'del_block', 'cycle', 'huge_dim', 'rename_bottom')


def case_spec(targets, seed, index):
    """Case ``index`` of run ``seed``: (target, seed file name, its bytes, ops).
    Each case draws from its own generator, so any case can be rerun alone.
    Half the text cases use only edits that keep the file parseable."""
    r = random.Random('%d/%d' % (seed, index))
    t = targets[r.randrange(len(targets))]
    name, data = t.seeds[r.randrange(len(t.seeds))]
    if t.kind == 'text' and r.random() < 0.5:
        ops = [(r.choice(PARSEABLE_TEXT_OPS), r.randrange(1 << 30)) for _ in range(r.randint(1, 3))]
    else:
        ops = random_ops(r, t.kind)
    return t, name, data, ops


def _quiet():
    import logging
    import warnings
    logging.getLogger('minicaffe').setLevel(logging.CRITICAL)
    warnings.simplefilter('ignore')     # Pillow's decompression-bomb warnings on fuzzed headers


def worker(start, end, seed, timeout, mem_mb, target_names):
    """Cases [start, end) in this process, one JSON line each on stdout (a
    {"start": i} line first, so that the parent knows which case a crash hit).
    The address-space limit is set after the (trusted) seed files are built."""
    _quiet()
    thread_errors = []
    threading.excepthook = lambda a: thread_errors.append('%s: %s in thread %s' % (
        a.exc_type.__name__, a.exc_value, a.thread.name if a.thread else '?'))
    workdir = tempfile.mkdtemp(prefix='minicaffe-fuzz-worker-')
    try:
        targets = build_targets(workdir)
        if target_names:
            targets = [t for t in targets if t.name in target_names]
        if mem_mb:
            import resource
            limit = int(mem_mb) << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        out = sys.stdout
        for i in range(start, end):
            t, name, data, ops = case_spec(targets, seed, i)
            out.write(json.dumps({'start': i}) + '\n')
            out.flush()
            del thread_errors[:]
            if os.environ.get('MINICAFFE_FUZZ_TEST_CRASH_AT') == str(i):     # the runner's own test
                os.kill(os.getpid(), signal.SIGKILL)
            outcome, exc, _ = run_case(t, name, data, ops, workdir, timeout)
            detail = ''
            if outcome in FAILURES and exc is not None:
                detail = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
            if thread_errors and outcome not in FAILURES:
                outcome, detail = 'escaped', '; '.join(thread_errors)
            out.write(json.dumps({'i': i, 'target': t.name, 'seed': name, 'ops': ops,
                                  'outcome': outcome, 'detail': detail[-2000:]}) + '\n')
            out.flush()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _worker_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        env[var] = '1'          # small address space per worker; the workers run side by side
    return env


def _run_range(start, end, seed, timeout, mem_mb, target_names, results, stderr_tails):
    """Cases [start, end) in as many worker processes as it takes: a worker
    that dies or stops answering is recorded against its current case and a
    new one goes on with the next case."""
    import queue
    i = start
    while i < end:
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', str(i), str(end), '--seed', str(seed),
               '--timeout', str(timeout), '--mem-mb', str(mem_mb)]
        for name in target_names or []:
            cmd += ['--target', name]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_worker_env())
        lines = queue.Queue()
        err_chunks = []
        threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True).start()
        current, startup = None, True
        while True:
            try:
                # a case's own alarm fires at `timeout`; silence well past it is a hang
                ln = lines.get(timeout=timeout * 2 + (60 if startup else 15))
            except queue.Empty:
                proc.kill()
                proc.wait()
                results.append({'i': current if current is not None else i, 'outcome': 'hang',
                                'detail': 'worker silent past the time limit', 'target': '?'})
                i = (current if current is not None else i) + 1
                break
            if ln is None:                      # the worker exited
                proc.wait()
                if current is not None:         # ... in the middle of a case
                    results.append({'i': current, 'outcome': 'crash', 'target': '?',
                                    'detail': 'worker exit status %s' % proc.returncode})
                    i = current + 1
                elif proc.returncode != 0:
                    results.append({'i': i, 'outcome': 'crash', 'target': '?',
                                    'detail': 'worker failed to start: status %s' % proc.returncode})
                    i = end
                else:
                    i = end
                break
            rec = json.loads(ln)
            startup = False
            if 'start' in rec:
                current = rec['start']
            else:
                results.append(rec)
                current = None
        for _ in range(50):
            if err_chunks:
                break
            threading.Event().wait(0.1)
        tail = ''.join(c or '' for c in err_chunks)
        if 'Traceback' in tail:
            stderr_tails.append(tail[-3000:])


def run_isolated(cases, seed=1, workers=2, timeout=20, mem_mb=3072, target_names=None):
    """Run ``cases`` seeded cases in worker subprocesses (``workers`` at a time).
    Returns (per-case result records, stderr of workers that printed a traceback)."""
    results, tails = [], []
    bounds = [cases * k // workers for k in range(workers + 1)]
    threads = [threading.Thread(target=_run_range, args=(bounds[k], bounds[k + 1], seed, timeout, mem_mb,
                                                         target_names, results, tails))
               for k in range(workers) if bounds[k + 1] > bounds[k]]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sorted(results, key=lambda r: r['i']), tails


def summarize(results):
    """Lines of a table: cases and outcomes per target, and the failures."""
    by_target = collections.defaultdict(collections.Counter)
    for r in results:
        by_target[r.get('target', '?')][r['outcome']] += 1
    lines = ['%-17s %6s %6s %6s %8s %8s %5s %6s' % ('target', 'cases', 'ok', 'error', 'escaped', 'unnamed',
                                                    'hang', 'crash')]
    total = collections.Counter()
    for name in sorted(by_target):
        c = by_target[name]
        total.update(c)
        lines.append('%-17s %6d %6d %6d %8d %8d %5d %6d' % (name, sum(c.values()), c['ok'], c['error'],
                                                            c['escaped'], c['unnamed'], c['hang'], c['crash']))
    lines.append('%-17s %6d %6d %6d %8d %8d %5d %6d' % ('TOTAL', sum(total.values()), total['ok'], total['error'],
                                                        total['escaped'], total['unnamed'], total['hang'],
                                                        total['crash']))
    for r in results:
        if r['outcome'] in FAILURES:
            lines.append('\n[case %s: %s %s] %s ops=%s\n%s' % (r['i'], r.get('target'), r['outcome'],
                                                               r.get('seed', ''), r.get('ops', ''),
                                                               r.get('detail', '')))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--cases', type=int, default=4000, help='total cases, spread over the targets')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--target', action='append', default=[], help='only these targets')
    ap.add_argument('--timeout', type=int, default=20, help='seconds per case before it counts as a hang')
    ap.add_argument('--show', type=int, default=5, help='print this many failures per target')
    ap.add_argument('--keep', help='keep failing inputs in this folder')
    ap.add_argument('--isolate', action='store_true',
                    help='each case in a worker subprocess with a memory limit (see above)')
    ap.add_argument('--workers', type=int, default=2, help='with --isolate: worker processes side by side')
    ap.add_argument('--mem-mb', type=int, default=3072, help='with --isolate: RLIMIT_AS of a worker, MiB')
    ap.add_argument('--worker', nargs=2, type=int, metavar=('START', 'END'), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.seed, args.timeout, args.mem_mb, args.target)
    if args.isolate:
        results, tails = run_isolated(args.cases, args.seed, args.workers, args.timeout, args.mem_mb,
                                      args.target)
        print('\n'.join(summarize(results)))
        for t in tails:
            print('\nworker stderr with a traceback:\n' + t)
        return 1 if tails or any(r['outcome'] in FAILURES for r in results) else 0
    import logging
    import warnings
    logging.getLogger('minicaffe').setLevel(logging.ERROR)
    warnings.simplefilter('ignore')     # Pillow's decompression-bomb warnings on fuzzed headers
    try:
        import resource
        soft = 12 << 30
        resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))
    except (ImportError, ValueError, OSError):
        pass
    workdir = tempfile.mkdtemp(prefix='minicaffe-fuzz-')
    rng = random.Random(args.seed)
    try:
        targets = build_targets(workdir)
        if args.target:
            targets = [t for t in targets if t.name in args.target]
        per = max(1, args.cases // max(1, len(targets)))
        totals = collections.Counter()
        print('%-16s %7s %7s %7s %8s %8s %5s  %s' % ('target', 'cases', 'ok', 'error', 'escaped',
                                                     'unnamed', 'hang', 'depth'))
        bad_examples = []
        for t in targets:
            counts = collections.Counter()
            shown = 0
            for _ in range(per):
                name, data = rng.choice(t.seeds)
                ops = random_ops(rng, t.kind)
                outcome, exc, path = run_case(t, name, data, ops, workdir, args.timeout)
                counts[outcome] += 1
                if outcome in ('escaped', 'unnamed', 'hang'):
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        shutil.copy(str(path), os.path.join(args.keep, '%s-%d-%s' % (
                            t.name, sum(counts.values()), path.name)))
                    if shown < args.show:
                        shown += 1
                        tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
                        bad_examples.append('[%s %s] %s ops=%s\n%s' % (t.name, outcome, name, ops, tb))
            totals.update(counts)
            print('%-16s %7d %7d %7d %8d %8d %5d  %s' % (t.name, sum(counts.values()), counts['ok'],
                                                         counts['error'], counts['escaped'],
                                                         counts['unnamed'], counts['hang'], t.depth))
        print('%-16s %7d %7d %7d %8d %8d %5d' % ('TOTAL', sum(totals.values()), totals['ok'], totals['error'],
                                                 totals['escaped'], totals['unnamed'], totals['hang']))
        for ex in bad_examples:
            print('\n' + ex)
        return 1 if (totals['escaped'] or totals['unnamed'] or totals['hang']) else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
