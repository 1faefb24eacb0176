"""The package's import rules (README, "Layout"), checked on the source.

* The engine (every module outside ``minicaffe/commands/`` and ``minicaffe/lrcn/``:
  blob, net, layers, solvers, weights, gpu, parallel, onnx, and pycaffe's io, draw,
  net_spec...) never imports the commands or the LRCN applications, not even inside a
  function, and names none of them in a string (lazy import tables).
* No module imports itself back through others: the import graph, with imports inside
  functions counted, has no cycle (gpu/backend -> gpu/kernels -> rng -> gpu/backend
  was one).
"""
import ast
import os

import pytest

import minicaffe

PACKAGE_DIR = os.path.dirname(os.path.abspath(minicaffe.__file__))
UPPER = ('minicaffe.commands', 'minicaffe.lrcn')
ENTRY_POINTS = {'minicaffe.__main__'}      # `python -m minicaffe` is the command itself


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _package_modules():
    mods = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith('.py') and not f.endswith('_pb2.py'):
                path = os.path.join(folder, f)
                mods[_module_name(path)] = path
    return mods


MODULES = _package_modules()


def _imports(name, path):
    """The package modules ``name`` imports anywhere in its source."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - (node.level - 1)]
                base = '.'.join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:        # `from pkg import module` imports pkg.module
                full = base + '.' + a.name
                found.add(full if full in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_upper(name):
    return name in ENTRY_POINTS or any(name == u or name.startswith(u + '.') for u in UPPER)


def test_the_subpackages_exist_and_the_graph_is_not_empty():
    assert 'minicaffe.commands.cli' in MODULES and 'minicaffe.lrcn.captioner' in MODULES
    assert 'minicaffe.net' in GRAPH['minicaffe.commands.nets']


@pytest.mark.parametrize('name', sorted(n for n in MODULES if not _is_upper(n)))
def test_engine_module_never_reaches_up(name):
    upward = sorted(m for m in GRAPH[name] if _is_upper(m))
    assert not upward, '%s imports %s (commands/apps -> engine, never back)' % (name, upward)
    strings = [n.value for n in ast.walk(ast.parse(open(MODULES[name]).read()))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    named = sorted(s for s in strings if s.startswith(tuple(u + '.' for u in UPPER)))
    assert not named, '%s names %s' % (name, named)


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_circle():
    planted = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert _cycles(planted) == [['a', 'b', 'c']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_gpu_reset_still_clears_what_kernels_and_rng_cached():
    """backend.reset() forgets the compiled kernels and the device generator
    through hooks they register (it no longer imports them)."""
    from minicaffe import rng
    from minicaffe.gpu import backend, kernels
    kernels._modules['probe'] = object()
    rng._state['gpu_rng'] = object()
    backend.on_reset(rng._forget_gpu_rng)     # registered on the first gpu_rng(); here by hand
    backend.reset()
    assert 'probe' not in kernels._modules
    assert 'gpu_rng' not in rng._state
