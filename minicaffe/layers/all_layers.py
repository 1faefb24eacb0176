"""Imports every layer module of this package so that each registers its types."""
import importlib
import pkgutil

from . import __path__ as _pkg_path

for _info in sorted(pkgutil.iter_modules(_pkg_path), key=lambda m: m.name):
    if _info.name not in ('base', 'all_layers'):
        importlib.import_module('.' + _info.name, __package__)
