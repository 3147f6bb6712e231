"""cimexp: compute-in-memory quantization experiments (column-wise weight and partial-sum quantization)."""

__version__ = "0.2.0"
