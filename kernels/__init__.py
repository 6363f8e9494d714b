"""Kernels, installed as ``upo_fast.kernels``. Each op lives in its own file with a pure-PyTorch ``*_ref``
beside the Triton kernels; the reference is what the CPU path runs and what tests compare against."""
