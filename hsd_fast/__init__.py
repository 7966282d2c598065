"""hsd_fast: the batched PyTorch engine (verification kernels, decoding engine, fidelity reports).

Every scheme here has the same name as its exact twin in :mod:`hsd_ref`, which is its oracle.
"""
