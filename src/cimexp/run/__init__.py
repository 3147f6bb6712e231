"""The run machinery shared by the entry points (``cimexp.train``, ``cimexp.evaluate``, ``cimexp.post_training``,
``cimexp.cost``), in the order a run meets it:

- :mod:`.entry`: the Hydra entry wrapper: checks a command line before anything is written, ``--help``, one-line
  errors.
- :mod:`.config`: where the configs live, composition, and the checks of every setting (no Lightning).
- :mod:`.build`: the network, callbacks, loggers and data files of a composed config; trained networks from
  checkpoints.
- :mod:`.resume`: which checkpoint a run resumes from and under which settings it may.
- :mod:`.classifier` (the LightningModule), :mod:`.optim` (weight-decay groups, schedule length) and
  :mod:`.trainer` (the Lightning trainer with its callbacks and loggers).
- :mod:`.callbacks`: the Lightning callbacks, by kind.
- :mod:`.summary`: what a finished or stopped training run records and says; :mod:`.provenance`: run names, git
  state, the resolved config; :mod:`.loggers`: the W&B logger.

The file formats a run writes are :mod:`cimexp.results` (``results.json``, the config hash) and :mod:`cimexp.files`
(atomic writes, checkpoints, the run lock).
"""
