"""cimexp's Hydra config groups, installed as the package ``cimexp.conf`` (``pkg://cimexp.conf``).

This folder stays at the top of the repository, where users look for configs; ``pyproject.toml`` maps it into the
package so that a wheel carries it and every entry point finds it from any directory.
"""
