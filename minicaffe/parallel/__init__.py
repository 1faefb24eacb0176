"""Data-parallel training (Caffe 1.0's multi-GPU semantics) over existing
distributed engines: MPI (mpi4py) for CPU processes and machines, NCCL (through
CuPy) for GPUs.  The solver code only sees :class:`comm.Communicator`."""
