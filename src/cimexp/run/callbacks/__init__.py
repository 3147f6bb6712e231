"""Lightning callbacks of a cimexp run, by kind: the QAT schedule (:mod:`.qat`), bookkeeping (:mod:`.records`),
the recovery checkpoint (:mod:`.checkpoints`), partial-sum telemetry (:mod:`.telemetry`), randomness tied to the
run's place (:mod:`.randomness`) and the progress bar (:mod:`.progress`).

The stateful ones keep their state in checkpoints (``state_dict``), so a resumed run continues the schedule, the
cumulative training time and the per-epoch history where the killed run left them; reseeding, telemetry and
variation-aware training draw everything from ``(seed, epoch, batch)`` or ``(seed, global_step)`` and need no state.
A run may be resumed from any training batch's end (:class:`RecoveryCheckpoint`), so nothing here may assume that
``on_train_epoch_start`` ran in the current process.
"""

from cimexp.run.callbacks.checkpoints import KeepPreviousCheckpointIO, RecoveryCheckpoint, RunStopped
from cimexp.run.callbacks.progress import RunProgressBar, run_eta
from cimexp.run.callbacks.qat import QATSchedule
from cimexp.run.callbacks.randomness import ReseedEachBatch, VariationAwareTraining
from cimexp.run.callbacks.records import EpochTimer, ResultsWriter
from cimexp.run.callbacks.telemetry import PsumTelemetry

__all__ = [
    "KeepPreviousCheckpointIO",
    "EpochTimer",
    "PsumTelemetry",
    "QATSchedule",
    "RecoveryCheckpoint",
    "ReseedEachBatch",
    "ResultsWriter",
    "RunProgressBar",
    "RunStopped",
    "VariationAwareTraining",
    "run_eta",
]
