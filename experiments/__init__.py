"""The paper's sweeps (``sweep/<figure>/<preset>.yaml``), installed as the package ``cimexp.experiments`` and put on
Hydra's search path by the primary configs (``pkg://cimexp.experiments``). ``results/`` holds the committed outputs
of those sweeps and is not part of the package.
"""
