"""Files that are not what they claim (issue 11, section 1): /dev/zero, FIFOs,
directories, over-large files, blobs of absurd shape in solver states.  Every
reader of a user file goes through minicaffe.fileio, so each must answer with
a MinicaffeError naming the file -- never hang, never read forever."""
import os
import signal

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe import fileio
from minicaffe.errors import DataSourceError, MinicaffeError, WeightsError
from minicaffe.protoio import pb
from minicaffe.solvers import Solver

from test_solve import make_case

NET = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
'''


@pytest.fixture(autouse=True)
def no_hang():
    """A regression that blocks on a FIFO fails the test instead of hanging the suite."""
    def hung(signum, frame):
        raise AssertionError('blocked reading a file (FIFO?)')
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / 'pipe'
    os.mkfifo(str(path))
    return str(path)


@pytest.fixture(params=['/dev/zero', 'fifo', 'dir'])
def not_a_file(request, tmp_path):
    if request.param == 'fifo':
        path = tmp_path / 'pipe'
        os.mkfifo(str(path))
        return str(path)
    if request.param == 'dir':
        return str(tmp_path)
    if not os.path.exists('/dev/zero'):
        pytest.skip('no /dev/zero')
    return '/dev/zero'


def net_file(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    return str(path)


KIND = r'(character device|FIFO \(named pipe\)|directory); only regular files can be read'


def test_checked_reader_reads_regular_files_only(tmp_path, not_a_file):
    ok = tmp_path / 'ok.txt'
    ok.write_bytes(b'a\r\nb')
    assert fileio.read_bytes(str(ok)) == b'a\r\nb'
    assert fileio.read_text(str(ok)) == 'a\nb'
    with pytest.raises(MinicaffeError, match=KIND):
        fileio.read_bytes(not_a_file, 'thing')
    with pytest.raises(MinicaffeError, match=KIND):
        fileio.check_regular_file(not_a_file, 'thing')


def test_size_bound_applies_before_reading(tmp_path, monkeypatch):
    big = tmp_path / 'big.prototxt'
    big.write_text(NET)
    monkeypatch.setenv('MINICAFFE_MAX_FILE_BYTES', '10')
    with pytest.raises(MinicaffeError, match=r'big\.prototxt is \d+ bytes, more than the 10 bytes'):
        caffe.Net(str(big), caffe.TEST)
    with pytest.raises(WeightsError, match='more than the 10 bytes'):
        fileio.read_bytes(str(big), 'weights file', WeightsError)


def test_net_from_a_non_file(not_a_file):
    with pytest.raises(MinicaffeError, match=KIND):
        caffe.Net(not_a_file, caffe.TEST)


def test_weights_from_a_non_file(tmp_path, not_a_file):
    net = caffe.Net(net_file(tmp_path), caffe.TEST)
    with pytest.raises(WeightsError, match='weights file .*' + KIND):
        net.copy_from(not_a_file)


def test_solver_and_its_net_from_a_non_file(tmp_path, not_a_file):
    with pytest.raises(MinicaffeError, match=KIND):
        caffe.get_solver(not_a_file)
    solver = tmp_path / 'solver.prototxt'
    solver.write_text('net: "%s"\nbase_lr: 0.1\nmax_iter: 1\n' % not_a_file)
    with pytest.raises(MinicaffeError, match=KIND):
        caffe.get_solver(str(solver))


def test_restore_from_a_non_file(tmp_path, not_a_file):
    solver = Solver(make_case(tmp_path))
    with pytest.raises(WeightsError, match='solver state .*' + KIND):
        solver.restore(not_a_file)


def _state(solver, learned_net, **fields):
    state = pb.SolverState(iter=3, learned_net=learned_net, current_step=0)
    for h in solver.history:
        bp = state.history.add()
        bp.shape.dim.extend(h.shape)
        bp.data.extend(np.zeros(h.size).tolist())
    for k, v in fields.items():
        setattr(state, k, v)
    return state


def test_state_whose_learned_net_is_a_non_file(tmp_path, not_a_file):
    solver = Solver(make_case(tmp_path))
    path = tmp_path / 's_iter_3.solverstate'
    path.write_bytes(_state(solver, not_a_file).SerializeToString())
    with pytest.raises(WeightsError, match='loading its learned_net: .*' + KIND):
        solver.restore(str(path))
    assert solver.iter == 0


def test_hdf5_source_list_and_listed_files(tmp_path, not_a_file):
    def net(source):
        return ('layer { name: "d" type: "HDF5Data" top: "data" hdf5_data_param {'
                ' source: "%s" batch_size: 1 } }' % source)
    path = tmp_path / 'h5.prototxt'
    path.write_text(net(not_a_file))
    with pytest.raises(DataSourceError, match='layer "d".*' + KIND):
        caffe.Net(str(path), caffe.TRAIN)
    listing = tmp_path / 'list.txt'
    listing.write_text(not_a_file + '\n')
    path.write_text(net(listing))
    with pytest.raises(DataSourceError, match=r'layer "d".*HDF5 file \(listed in .*list\.txt\) .*' + KIND):
        caffe.Net(str(path), caffe.TRAIN)


def test_mean_file_and_image_list_from_a_non_file(tmp_path, not_a_file):
    from minicaffe.layers.image_data import parse_image_list
    from minicaffe.transform import load_mean_file
    with pytest.raises(DataSourceError, match=KIND):
        load_mean_file(not_a_file)
    if not os.path.isdir(not_a_file):
        with pytest.raises(DataSourceError, match=KIND):
            parse_image_list(not_a_file)


def test_lmdb_source_that_is_not_a_file(tmp_path, not_a_file):
    if os.path.isdir(not_a_file):
        pytest.skip('a directory is an LMDB folder (without data.mdb: its own error)')
    path = tmp_path / 'db.prototxt'
    path.write_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param {'
                    ' source: "%s" batch_size: 1 backend: LMDB } }' % not_a_file)
    with pytest.raises(DataSourceError, match='layer "d".*LMDB data file .*' + KIND):
        caffe.Net(str(path), caffe.TRAIN)


@pytest.mark.parametrize('argv', [
    ['test', '--model', '{bad}', '--weights', '{w}'],
    ['test', '--model', '{net}', '--weights', '{bad}'],
    ['train', '--solver', '{bad}'],
    ['time', '{bad}'],
    ['upgrade', '{bad}', '{out}'],
])
def test_cli_exit_2(tmp_path, capsys, fifo, argv):
    w = tmp_path / 'w.caffemodel'
    caffe.Net(net_file(tmp_path), caffe.TEST).save(str(w))
    subst = {'bad': fifo, 'net': net_file(tmp_path), 'w': str(w), 'out': str(tmp_path / 'o')}
    assert cli.main([a.format(**subst) for a in argv]) == 2
    err = capsys.readouterr().err
    assert 'minicaffe: error: ' in err and fifo in err and 'FIFO' in err


# ---------------------------------------------------------------- blobs in files
def test_history_blob_of_absurd_shape(tmp_path):
    solver = Solver(make_case(tmp_path))
    state = _state(solver, 'x.caffemodel')
    state.history[0].shape.dim[:] = [100000, 1000000]        # 1e11 elements
    path = tmp_path / 'huge.solverstate'
    path.write_bytes(state.SerializeToString())
    with pytest.raises(WeightsError, match=r'huge\.solverstate history blob 0: .*elements'):
        solver.restore(str(path))


def test_hdf5_history_dataset_of_absurd_shape_is_not_read(tmp_path):
    solver = Solver(make_case(tmp_path, solver_extra='snapshot_format: HDF5'))
    model = tmp_path / 'm.caffemodel.h5'
    solver.net.save_hdf5(str(model))
    path = tmp_path / 'huge.solverstate.h5'
    with h5py.File(str(path), 'w') as f:
        f.create_dataset('iter', data=np.array([3], np.int32))
        f.create_dataset('learned_net', data=np.bytes_(str(model).encode()))
        f.create_dataset('current_step', data=np.array([0], np.int32))
        g = f.create_group('history')
        for i, h in enumerate(solver.history):
            # chunked and never written: a tiny file declaring 1e11 values
            shape = (100000, 1000000) if i == 0 else h.shape
            g.create_dataset(str(i), shape=shape, dtype=np.float32, chunks=True)
    with pytest.raises(WeightsError, match='history blob 0: .*elements'):
        solver.restore(str(path))


def test_blob_written_in_a_prototxt_of_absurd_shape(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text('layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 1 } }'
                    ' blobs { shape { dim: 100000 dim: 1000000 } } }')
    with pytest.raises(WeightsError, match=r'net\.prototxt:1: .*layer "p".*blob 0.*elements'):
        caffe.Net(str(path), caffe.TEST)


# ---------------------------------------------------------------- section 2: incomplete states
@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_state_with_empty_learned_net_is_an_error(tmp_path, fmt):
    solver = Solver(make_case(tmp_path))
    if fmt == 'BINARYPROTO':
        path = tmp_path / 's.solverstate'
        path.write_bytes(_state(solver, '').SerializeToString())
    else:
        path = tmp_path / 's.solverstate.h5'
        with h5py.File(str(path), 'w') as f:
            f.create_dataset('iter', data=np.array([3], np.int32))
            f.create_dataset('learned_net', data=np.bytes_(b''))
            f.create_dataset('current_step', data=np.array([0], np.int32))
            g = f.create_group('history')
            for i, h in enumerate(solver.history):
                g.create_dataset(str(i), data=h)
    with pytest.raises(WeightsError, match='learned_net is empty'):
        solver.restore(str(path))
    assert solver.iter == 0


def test_truncated_state_without_current_step_is_an_error(tmp_path):
    solver = Solver(make_case(tmp_path))
    solver.step(2)
    _, state = solver.snapshot()
    raw = open(state, 'rb').read()
    msg = pb.SolverState.FromString(raw)
    assert msg.HasField('current_step')
    # Caffe writes current_step (field 4) last: cut it off at that field boundary
    msg.ClearField('current_step')
    cut = msg.SerializeToString()
    assert raw.startswith(cut) and len(cut) < len(raw)
    (tmp_path / 'cut.solverstate').write_bytes(cut)
    fresh = Solver(make_case(tmp_path / 'b'))
    with pytest.raises(WeightsError, match='lacks current_step'):
        fresh.restore(str(tmp_path / 'cut.solverstate'))
    assert fresh.iter == 0


def test_hdf5_state_lacking_a_field_is_an_error(tmp_path):
    solver = Solver(make_case(tmp_path, solver_extra='snapshot_format: HDF5'))
    solver.step(1)
    _, state = solver.snapshot()
    for field in ('current_step', 'learned_net', 'iter'):
        cut = tmp_path / ('no_%s.solverstate.h5' % field)
        with h5py.File(state, 'r') as src, h5py.File(str(cut), 'w') as dst:
            for k in src:
                if k != field:
                    src.copy(k, dst)
        with pytest.raises(WeightsError, match='lacks %s' % field):
            solver.restore(str(cut))


def test_complete_states_still_restore(tmp_path):
    for fmt in ('BINARYPROTO', 'HDF5'):
        solver = Solver(make_case(tmp_path / fmt, solver_extra='snapshot_format: %s' % fmt))
        solver.step(2)
        _, state = solver.snapshot()
        fresh = Solver(make_case(tmp_path / (fmt + 'b'), solver_extra='snapshot_format: %s' % fmt))
        fresh.restore(state)
        assert fresh.iter == 2
