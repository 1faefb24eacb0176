from setuptools import find_packages, setup

setup(
    name='minicaffe',
    version='0.1.0',
    description='A Caffe-faithful deep learning framework in Python (NumPy on the CPU, CuPy on NVIDIA GPUs)',
    packages=find_packages(include=['minicaffe', 'minicaffe.*']),
    package_data={'minicaffe': ['proto/*.proto', 'gpu/kernels/*.cu', 'gpu/kernels/*.cuh']},
    python_requires='>=3.9',
    install_requires=['numpy', 'protobuf>=7.35.1', 'h5py', 'pillow', 'lmdb', 'threadpoolctl'],
    extras_require={
        # onnx and onnxruntime: the ONNX export tests (they skip without them)
        'test': ['pytest', 'hypothesis', 'grpcio-tools==1.85.1', 'mpi4py', 'mpich', 'onnx',
                 'onnxruntime'],
        'onnx': ['onnx', 'onnxruntime'],
        'plot': ['matplotlib'],
        # Intel MKL's libmkl_rt for minicaffe's GEMMs, picked at run time (minicaffe/blas.py).
        # Not in 'test': its wheel is 229 MB (plus intel-openmp, 50 MB); the MKL tests skip
        # without it.
        'mkl': ['mkl'],
        # PyTorch for the benchmarks' comparison columns (bench_cpu.py, bench_gpu.py; their
        # tests skip without it).  PyPI's default Linux wheel pulls the CUDA packages (GBs);
        # a CPU-only machine wants the +cpu build (192 MB for torch 2.13.0+cpu).
        'torch': ['torch'],
        'mpi': ['mpi4py', 'mpich', 'threadpoolctl'],
        # NCCL for multi-GPU training (cupy.cuda.nccl) comes from NVIDIA's wheel
        'cuda12': ['cupy-cuda12x>=13', 'nvidia-nccl-cu12'],
        'cuda13': ['cupy-cuda13x>=13', 'nvidia-nccl-cu13'],
    },
    entry_points={'console_scripts': ['minicaffe=minicaffe.commands.cli:main']},
)
