"""The Solver's SolverParameter fields, beyond the conformance trajectories.

Each test builds a tiny HDF5Data -> InnerProduct -> SoftmaxWithLoss net in a
temporary folder (``make_case``) and checks one field's behaviour as Caffe's
solver.cpp / sgd_solver.cpp / upgrade_proto.cpp define it.
"""
import os

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb
from minicaffe.solvers import Solver, read_solver_param

NET = '''name: "tiny"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{src}" batch_size: {batch} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }}
                        bias_filler {{ type: "constant" value: 0.1 }} }} }}
{extra}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include {{ phase: TEST }} }}
'''

SOLVER = '''net: "{net}"
base_lr: 0.1
momentum: 0.9
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 3
max_iter: 8
display: 1
random_seed: 1701
snapshot_prefix: "{prefix}"
{extra}
'''


def make_data(folder, n=16, dim=6, classes=3, seed=0):
    """data.h5 (n rows, ``dim`` features, labels in [0, classes)) and its list file."""
    rs = np.random.RandomState(seed)
    path = os.path.join(folder, 'data.h5')
    with h5py.File(path, 'w') as f:
        f['data'] = rs.standard_normal((n, dim)).astype(np.float32)
        f['label'] = rs.randint(0, classes, n).astype(np.float32)
    lst = os.path.join(folder, 'list.txt')
    with open(lst, 'w') as f:
        f.write(path + '\n')
    return lst


def make_case(tmp_path, solver_extra='', net_extra='', batch=4, n=16, name='solver.prototxt',
              prefix=None, solver_text=None):
    """Write data, net and solver under tmp_path; returns the solver path (str)."""
    tmp_path = os.fspath(tmp_path)
    os.makedirs(tmp_path, exist_ok=True)
    lst = make_data(tmp_path, n=n)
    net = os.path.join(tmp_path, 'net.prototxt')
    with open(net, 'w') as f:
        f.write(NET.format(src=lst, batch=batch, extra=net_extra))
    if prefix is None:
        prefix = os.path.join(tmp_path, 'snap', 's')
    path = os.path.join(tmp_path, name)
    with open(path, 'w') as f:
        f.write(solver_text if solver_text is not None else
                SOLVER.format(net=net, prefix=prefix, extra=solver_extra))
    return path


def edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, 'w') as f:
        f.write(text.replace(old, new))


def params(net):
    return [b.data.copy() for b in net.learnable_params]


class Logs(list):
    def __call__(self, msg):
        self.append(msg)

    def having(self, text):
        return [m for m in self if text in m]


# ---------------------------------------------------------------- snapshot_prefix rules
def test_snapshot_prefix_default_is_solver_path_without_extension(tmp_path):
    path = make_case(tmp_path, name='my_solver.prototxt')
    text = open(path).read().replace('snapshot_prefix', '# snapshot_prefix')
    open(path, 'w').write(text)
    param = read_solver_param(path)
    assert param.snapshot_prefix == os.path.join(os.fspath(tmp_path), 'my_solver')


def test_snapshot_prefix_naming_a_folder_gets_the_solver_stem(tmp_path):
    folder = tmp_path / 'snaps'
    folder.mkdir()
    path = make_case(tmp_path, prefix=os.fspath(folder), name='lenet_solver.prototxt')
    assert read_solver_param(path).snapshot_prefix == os.path.join(os.fspath(folder), 'lenet_solver')
    s = Solver(path)
    s.solve()            # snapshot_after_train writes the final snapshot there
    assert (folder / 'lenet_solver_iter_8.caffemodel').exists()
    assert (folder / 'lenet_solver_iter_8.solverstate').exists()


def test_snapshot_prefix_given_is_kept(tmp_path):
    path = make_case(tmp_path, prefix='out/run1')
    assert read_solver_param(path).snapshot_prefix == 'out/run1'


def test_snapshot_without_prefix_in_a_param_is_an_error(tmp_path):
    param = read_solver_param(make_case(tmp_path, solver_extra='snapshot: 4'))
    param.ClearField('snapshot_prefix')
    with pytest.raises(MinicaffeError, match='snapshot_prefix'):
        Solver(param)


def test_unwritable_snapshot_prefix_is_an_early_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    path = make_case(tmp_path, prefix=os.fspath(blocker / 'sub' / 'p'), solver_extra='snapshot: 4')
    with pytest.raises(MinicaffeError, match='cannot write to snapshot prefix'):
        Solver(path)


# ---------------------------------------------------------------- solver type
@pytest.mark.parametrize('legacy,name', [('SGD', 'SGD'), ('NESTEROV', 'Nesterov'),
                                         ('ADAGRAD', 'AdaGrad'), ('RMSPROP', 'RMSProp'),
                                         ('ADADELTA', 'AdaDelta'), ('ADAM', 'Adam')])
def test_legacy_solver_type_enum(tmp_path, legacy, name):
    extra = 'solver_type: %s' % legacy
    path = make_case(tmp_path, solver_extra=extra)
    if name in ('AdaGrad', 'RMSProp'):      # both refuse momentum, as in Caffe
        edit(path, 'momentum: 0.9', '')
    s = caffe.get_solver(path)
    assert s.type == name
    assert len(s.history) == len(s.net.learnable_params) * (2 if name in ('AdaDelta', 'Adam') else 1)


def test_solver_type_and_legacy_enum_together_is_an_error(tmp_path):
    path = make_case(tmp_path, solver_extra='solver_type: ADAM\ntype: "Adam"')
    with pytest.raises(MinicaffeError, match='solver_type'):
        Solver(path)


def test_unknown_solver_type(tmp_path):
    path = make_case(tmp_path, solver_extra='type: "Adamax"')
    with pytest.raises(MinicaffeError, match='unknown solver type "Adamax"'):
        Solver(path)


def test_pycaffe_typed_solver_overrides_the_file(tmp_path):
    s = caffe.AdamSolver(make_case(tmp_path))
    assert s.type == 'Adam' and len(s.history) == 2 * len(s.net.learnable_params)


@pytest.mark.parametrize('extra,match', [
    ('average_loss: 0', 'average_loss'),
    ('iter_size: 0', 'iter_size'),
    ('regularization_type: "L3"', 'regularization_type'),
])
def test_bad_values_are_early_errors(tmp_path, extra, match):
    with pytest.raises(MinicaffeError, match=match):
        Solver(make_case(tmp_path, solver_extra=extra))


def test_unknown_lr_policy_is_an_early_error(tmp_path):
    path = make_case(tmp_path)
    edit(path, '"step"', '"cosine"')
    with pytest.raises(MinicaffeError, match='unknown lr_policy "cosine"'):
        Solver(path)


# ---------------------------------------------------------------- nets
def test_missing_net_file_names_it(tmp_path):
    path = make_case(tmp_path)
    os.remove(tmp_path / 'net.prototxt')
    with pytest.raises(MinicaffeError, match='net file .*net.prototxt.* does not exist'):
        Solver(path)


def test_missing_data_source_is_an_error_at_construction(tmp_path):
    path = make_case(tmp_path)
    os.remove(tmp_path / 'list.txt')
    with pytest.raises(MinicaffeError, match='list.txt'):
        Solver(path)


def test_test_iter_without_test_interval(tmp_path):
    with pytest.raises(MinicaffeError, match='test_interval'):
        Solver(make_case(tmp_path, solver_extra='test_iter: 2'))


def test_test_iter_count_must_match_explicit_test_nets(tmp_path):
    path = make_case(tmp_path)
    text = open(path).read().replace('net:', 'train_net:')
    text += 'test_net: "%s"\ntest_net: "%s"\ntest_iter: 1\ntest_interval: 2\n' % (
        tmp_path / 'net.prototxt', tmp_path / 'net.prototxt')
    open(path, 'w').write(text)
    with pytest.raises(MinicaffeError, match='test_iter'):
        Solver(path)


def test_two_train_net_fields_is_an_error(tmp_path):
    path = make_case(tmp_path)
    open(path, 'a').write('train_net: "%s"\n' % (tmp_path / 'net.prototxt'))
    with pytest.raises(MinicaffeError, match='exactly one of net'):
        Solver(path)


def test_relative_net_path_resolves_beside_the_solver(tmp_path, monkeypatch):
    path = make_case(tmp_path)
    edit(path, str(tmp_path / 'net.prototxt'), 'net.prototxt')
    monkeypatch.chdir('/')
    assert Solver(path).net.name == 'tiny'


STAGED = '''layer { name: "extra_train" type: "InnerProduct" bottom: "ip" top: "ip2"
  include { stage: "wide" }
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0 } } }
layer { name: "lvl" type: "InnerProduct" bottom: "ip" top: "ip3"
  include { min_level: 2 }
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0 } } }'''


def _layer_names(net):
    return list(net._layer_names)


def test_train_state_and_test_state(tmp_path):
    path = make_case(tmp_path, net_extra=STAGED, solver_extra='''
train_state { stage: "wide" level: 3 }
test_iter: 1
test_iter: 1
test_interval: 4
test_state { stage: "wide" }
test_state { level: 2 }''')
    s = Solver(path)
    assert 'extra_train' in _layer_names(s.net) and 'lvl' in _layer_names(s.net)
    assert len(s.test_nets) == 2
    t0, t1 = (_layer_names(n) for n in s.test_nets)
    assert 'extra_train' in t0 and 'lvl' not in t0
    assert 'extra_train' not in t1 and 'lvl' in t1
    assert 'acc' in t0 and 'acc' not in _layer_names(s.net)


def test_test_state_count_must_match(tmp_path):
    path = make_case(tmp_path, solver_extra='test_iter: 1\ntest_iter: 1\ntest_interval: 4\n'
                                            'test_state { stage: "a" }')
    with pytest.raises(MinicaffeError, match='test_state'):
        Solver(path)


def test_stages_and_level_arguments_apply_to_every_net(tmp_path):
    # Solver(stages=, level=) is our extension (Net(file, phase, level, stages) for each net);
    # `minicaffe train --stage/--level` edits train_state only (test_train_cli.py).
    path = make_case(tmp_path, net_extra=STAGED, solver_extra='test_iter: 1\ntest_interval: 4')
    s = Solver(path, stages=['wide'], level=2)
    for net in [s.net] + s.test_nets:
        assert 'extra_train' in _layer_names(net) and 'lvl' in _layer_names(net)
    plain = Solver(path)
    assert 'extra_train' not in _layer_names(plain.net) and 'lvl' not in _layer_names(plain.net)


def test_multiple_test_nets_in_caffe_order(tmp_path):
    # test_net_param first, then test_net files, then generic (net) instances.
    path = make_case(tmp_path)
    other = tmp_path / 'other.prototxt'
    other.write_text((tmp_path / 'net.prototxt').read_text().replace('name: "tiny"', 'name: "file"'))
    inline = (tmp_path / 'net.prototxt').read_text().replace('name: "tiny"', 'name: "inline"')
    open(path, 'a').write('test_net_param { %s }\ntest_net: "%s"\ntest_iter: 1\ntest_iter: 2\n'
                          'test_iter: 3\ntest_interval: 4\n' % (inline, other))
    logs = Logs()
    s = Solver(path, logger=logs)
    assert [n.name for n in s.test_nets] == ['inline', 'file', 'tiny']
    s.step(1)
    for i in range(3):
        assert logs.having('Iteration 0, Testing net (#%d)' % i)
    assert len(logs.having('Test net output #0: acc = ')) == 3


def test_test_outputs_are_means_over_test_iter(tmp_path):
    path = make_case(tmp_path, solver_extra='test_iter: 3\ntest_interval: 100\ntest_compute_loss: true')
    logs = Logs()
    s = Solver(path, logger=logs)
    # what the test net computes, batch by batch, with the train net's weights
    ref = caffe.Net(os.fspath(tmp_path / 'net.prototxt'), caffe.TEST)
    ref.share_with(s.net)
    accs, losses = [], []
    for _ in range(3):
        ref.forward()
        accs.append(np.float32(ref.blobs['acc'].data))
        losses.append(np.float32(ref.blobs['loss'].data))
    s.step(1)
    acc = np.float32(np.float32(accs[0] + accs[1]) + accs[2]) / np.float32(3)
    loss = np.float32(np.float32(losses[0] + losses[1]) + losses[2]) / np.float32(3)
    assert logs.having('    Test net output #0: acc = %g' % acc)
    assert logs.having('    Test net output #1: loss = %g (* 1 = %g loss)' % (loss, loss))
    assert logs.having('Test loss: %g' % loss)


def test_test_initialization_false_skips_the_iteration_0_test(tmp_path):
    extra = 'test_iter: 1\ntest_interval: 2\n'
    logs = Logs()
    Solver(make_case(tmp_path, solver_extra=extra + 'test_initialization: false'), logger=logs).step(3)
    assert [m for m in logs if 'Testing net' in m] == ['Iteration 2, Testing net (#0)']
    logs2 = Logs()
    Solver(make_case(tmp_path, solver_extra=extra), logger=logs2).step(3)
    assert [m for m in logs2 if 'Testing net' in m] == ['Iteration 0, Testing net (#0)',
                                                         'Iteration 2, Testing net (#0)']


def test_test_compute_loss_off_by_default(tmp_path):
    logs = Logs()
    Solver(make_case(tmp_path, solver_extra='test_iter: 1\ntest_interval: 2'), logger=logs).step(1)
    assert not logs.having('Test loss')


# ---------------------------------------------------------------- training loop
def _losses_by_iteration(solver, n):
    seen = []
    solver.add_callback(lambda: None, lambda: seen.append(float(solver.net.blobs['loss'].data)))
    solver.step(n)
    return seen


def test_average_loss_smooths_the_displayed_loss(tmp_path):
    logs = Logs()
    s = Solver(make_case(tmp_path, solver_extra='average_loss: 3'), logger=logs)
    seen = _losses_by_iteration(s, 6)
    shown = [float(m.split('loss = ')[1]) for m in logs if ' iter/s, ' in m]
    assert len(shown) == 6
    for i, v in enumerate(shown):
        window = seen[max(0, i - 2):i + 1]
        assert v == pytest.approx(np.mean(window), rel=1e-5), i
    assert s.smoothed_loss == pytest.approx(np.mean(seen[-3:]), rel=1e-5)


def test_display_lines_are_caffes(tmp_path):
    logs = Logs()
    s = Solver(make_case(tmp_path, solver_extra='display: 2'), logger=logs)
    s.step(4)
    assert len(logs.having(' iter/s, ')) == 2
    assert logs.having('Iteration 2, lr = 0.1')
    line = [m for m in logs if m.startswith('Iteration 2 (')][0]
    assert 's/2 iters), loss = ' in line
    train_out = logs.having('    Train net output #0: loss = ')
    assert len(train_out) == 2 and train_out[0].endswith(' loss)')


def test_iter_size_accumulates_like_a_bigger_batch(tmp_path):
    big = Solver(make_case(tmp_path / 'a', batch=4))
    small = Solver(make_case(tmp_path / 'b', batch=2, solver_extra='iter_size: 2'))
    for dst, src in zip(small.net.learnable_params, big.net.learnable_params):
        dst.data[...] = src.data
    big.step(3)
    small.step(3)
    for a, b in zip(params(big.net), params(small.net)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_random_seed_makes_fillers_reproducible(tmp_path):
    p = make_case(tmp_path)
    a, b = params(Solver(p).net), params(Solver(p).net)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_max_iter_and_solve_finish_with_optimization_done(tmp_path):
    logs = Logs()
    s = Solver(make_case(tmp_path, solver_extra='test_iter: 1\ntest_interval: 4'), logger=logs)
    s.solve()
    assert s.iter == 8
    assert logs[-1] == 'Optimization Done.'
    assert logs.having('Iteration 8, loss = ')
    assert logs.having('Iteration 8, Testing net (#0)')


# ---------------------------------------------------------------- weights field
def _save_weights(tmp_path, name, layer_value):
    s = Solver(make_case(tmp_path / ('w_' + name)))
    for b in s.net.params['ip']:
        b.data[...] = layer_value
    out = os.fspath(tmp_path / (name + '.caffemodel'))
    s.net.save(out)
    return out


def test_weights_field_loads_comma_lists_into_train_and_test_nets(tmp_path):
    a = _save_weights(tmp_path, 'a', 1.5)
    # b holds only the test-only layer "extra" (a copy of the net whose ip is renamed)
    sb = Solver(make_case(tmp_path / 'wb', net_extra=''))
    param = pb.NetParameter()
    lp = param.layer.add(name='extra', type='InnerProduct')
    for blob in sb.net.params['ip']:
        bp = lp.blobs.add()
        bp.shape.dim.extend(blob.shape)
        bp.data.extend(np.full(blob.count, 2.5, np.float32))
    b = os.fspath(tmp_path / 'b.caffemodel')
    open(b, 'wb').write(param.SerializeToString())
    extra = '''layer { name: "extra" type: "InnerProduct" bottom: "data" top: "extra"
  include { phase: TEST } inner_product_param { num_output: 3 } }'''
    path = make_case(tmp_path / 'run', net_extra=extra,
                     solver_extra='weights: "%s, %s"\ntest_iter: 1\ntest_interval: 4' % (a, b))
    logs = Logs()
    s = Solver(path, logger=logs)
    assert np.all(s.net.params['ip'][0].data == 1.5)
    assert np.all(s.test_nets[0].params['extra'][0].data == 2.5)
    assert logs.having('Finetuning from %s' % a) and logs.having('Finetuning from %s' % b)


# ---------------------------------------------------------------- snapshot fields
def test_snapshot_after_train(tmp_path):
    s = Solver(make_case(tmp_path, solver_extra='snapshot: 5'))
    s.solve()
    names = sorted(os.listdir(tmp_path / 'snap'))
    assert names == ['s_iter_5.caffemodel', 's_iter_5.solverstate',
                     's_iter_8.caffemodel', 's_iter_8.solverstate']
    # max_iter a multiple of snapshot: no second snapshot at the end
    s2 = Solver(make_case(tmp_path / 'b', solver_extra='snapshot: 4'))
    s2.solve()
    assert sorted(os.listdir(tmp_path / 'b' / 'snap')) == [
        's_iter_4.caffemodel', 's_iter_4.solverstate', 's_iter_8.caffemodel', 's_iter_8.solverstate']


def test_snapshot_after_train_false(tmp_path):
    s = Solver(make_case(tmp_path, solver_extra='snapshot_after_train: false'))
    s.solve()
    assert not (tmp_path / 'snap').exists() or not os.listdir(tmp_path / 'snap')


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_snapshot_diff(tmp_path, fmt):
    from minicaffe import weights
    s = Solver(make_case(tmp_path, solver_extra='snapshot_diff: true\nsnapshot_format: %s' % fmt))
    s.step(2)
    model, _ = s.snapshot()
    diff = s.net.params['ip'][0].diff
    if fmt == 'HDF5':
        with h5py.File(model, 'r') as f:
            np.testing.assert_array_equal(f['diff/ip/0'][()], diff)
    else:
        param = weights.read_net_param_binary(model)
        lp = [layer for layer in param.layer if layer.name == 'ip'][0]
        np.testing.assert_array_equal(np.array(lp.blobs[0].diff, np.float32).reshape(diff.shape), diff)
    s2 = Solver(make_case(tmp_path / 'nodiff'))
    s2.step(1)
    model2, _ = s2.snapshot()
    param = weights.read_net_param_binary(model2)
    assert all(len(b.diff) == 0 for layer in param.layer for b in layer.blobs)


def test_clip_gradients_logs_caffes_line(tmp_path):
    logs = Logs()
    s = Solver(make_case(tmp_path, solver_extra='clip_gradients: 0.001'), logger=logs)
    s.step(1)
    assert logs.having('Gradient clipping: scaling down gradients (L2 norm ')


def test_callbacks_and_step_counts(tmp_path):
    s = Solver(make_case(tmp_path))
    calls = []
    s.add_callback(lambda: calls.append('start'), lambda: calls.append('ready'))
    s.step(3)
    assert calls == ['start', 'ready'] * 3 and s.iter == 3


@pytest.mark.parametrize('extra,message', [
    ('type: "RMSProp"', 'momentum cannot be used with RMSProp'),
    ('type: "RMSProp"\nmomentum: 0\nrms_decay: 1', 'rms_decay should lie between 0 and 1'),
    ('lr_policy: "sigmoid"\ngamma: 0.1\nstepsize: 0', 'needs stepsize > 0'),
    ('lr_policy: "exp"\ngamma: -0.5', 'needs gamma >= 0'),
])
def test_solver_settings_caffe_refuses_are_refused_when_the_solver_is_built(tmp_path, extra, message):
    # Caffe CHECKs these in the solver's constructor or at the first learning rate
    path = make_case(tmp_path, solver_extra=extra)
    if 'momentum: 0\n' in extra:
        edit(path, 'momentum: 0.9', '')
    with pytest.raises(MinicaffeError, match=message):
        Solver(path)
