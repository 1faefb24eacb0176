"""The ``minicaffe`` command line (cli.py wires the subcommands) and the modules
behind its commands: train/test (training), time (timing), summary, plot, upgrade,
convert-imageset/compute-mean (lmdb_tools), export-onnx, the progress bar.

Commands import the engine (net, layers, solvers, weights...), never the other way.
"""
