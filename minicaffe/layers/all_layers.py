"""Imports every layer module of this package so that each registers its types."""
import importlib
import os
import pkgutil

_pkg_path = [os.path.dirname(os.path.abspath(__file__))]

for _info in sorted(pkgutil.iter_modules(_pkg_path), key=lambda m: m.name):
    if _info.name not in ('base', 'all_layers'):
        importlib.import_module('.' + _info.name, __package__)
