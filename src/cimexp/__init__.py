"""cimexp: compute-in-memory quantization experiments (column-wise weight and partial-sum quantization)."""

__version__ = "0.2.0"

import os as _os

COMPILE_CACHE_ENV = {key: _os.environ.get(key) for key in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
"""The compile cache variables as the user set them (``None``: unset), read before anything imports torch: inductor
writes its default into the environment when first asked (:func:`cimexp.run.config.use_compile_cache`)."""
