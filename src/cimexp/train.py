"""Train a (CIM) network: ``python -m cimexp.train [group=option ...] [key=value ...]``.

``main`` is a thin Hydra entry point over :func:`train`, a plain function of a composed config that tests call
directly. The configs live in ``conf/`` at the repository root and are found relative to this file, so run from a
checkout installed with ``pip install -e .`` (see README).
"""

from __future__ import annotations

import math
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, TypeVar

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from cimexp.callbacks import (
    EpochTimer,
    PsumTelemetry,
    QATSchedule,
    RecoveryCheckpoint,
    ResultsWriter,
    check_checkpoint_intervals,
)
from cimexp.cim import (
    ADCErrors,
    Calibration,
    Granularity,
    VariationLevel,
    cim_layers,
    cim_summary,
    set_adc_errors,
    set_kernels,
)
from cimexp.cim.cost import CostModel
from cimexp.cim.quant import KERNEL_MODES
from cimexp.files import atomic_write_json, read_checkpoint
from cimexp.models import load_float_weights
from cimexp.module import COMPILE_MODES, NO_DECAY_KINDS, ImageClassifier, build_scheduler
from cimexp.results import hashed_config, make_record, reusable_results
from cimexp.utils import (
    CHECKOUT_DIR,
    finish_wandb,
    git_state,
    register_resolvers,
    resolve_ckpt_path,
    resolved_config,
    run_name,
    sweep_group,
    unfinished_checkpoint,
)

CallbackT = TypeVar("CallbackT", bound=L.Callback)

CONF_DIR = CHECKOUT_DIR / "conf"
"""``conf/`` of the checkout this package is installed from (editable install)."""

register_resolvers()


def validate_config(cfg: DictConfig) -> None:
    """Check the settings that Hydra cannot, before any data is loaded or model built.

    Hydra already rejects unknown group options (``model=resnet21``) and unknown keys. This checks values:
    the granularities, every CIM layer setting (by building one small layer with the configured factory, so the
    layer's own checks apply), the data module's arguments (by building it: it reads no file before ``setup``),
    the two-stage schedule length, and that referenced files exist.

    Raises:
        ValueError: a bad value; the message names it and the valid choices.
        FileNotFoundError: ``model.init_from`` or ``ckpt_path`` points nowhere.
    """
    for key in ("weight", "psum"):
        Granularity.parse(cfg.granularity[key], f"granularity.{key}")
    VariationLevel.parse(cfg.variation.level, "variation.level")
    calibration_settings(cfg.calibration)
    _check_choice("model.kernels", cfg.model.get("kernels", "auto"), KERNEL_MODES)
    for kind in cfg.no_weight_decay:
        _check_choice("no_weight_decay entry", kind, NO_DECAY_KINDS)
    smoothing = cfg.loss.label_smoothing
    if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"invalid loss.label_smoothing={smoothing!r}; valid: a number in [0, 1)")
    _check_choice("model.compile_mode", cfg.model.get("compile_mode", "default"), COMPILE_MODES)
    CostModel.from_config(cfg.cost, cfg.cim.get("adc_bits"))  # a bad cost.adc_model lists the valid ones
    adc_errors(cfg.adc)
    try:
        layer = instantiate(cfg.cim)(8, 8, 3, padding=1)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid CIM layer settings (the `cim` config node): {error}") from error
    _warn_sign_bit_cells(layer)
    try:  # the data module checks its arguments when built (batch sizes, workers, subsets against split sizes)
        instantiate(cfg.data, _partial_=True)()
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid data settings (the `data` config node): {error}") from error
    try:  # the optimizer and scheduler check their own arguments: build them on one parameter
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("scheduler"):
            scheduler = build_scheduler(instantiate(cfg.scheduler), optimizer, total_steps=2)
            optimizer.step()  # no gradient: changes nothing; some schedulers check their values only when stepped
            scheduler.step()
    except (ValueError, TypeError) as error:
        values = {k: v for k, v in {**cfg.optimizer, **(cfg.get("scheduler") or {})}.items() if k[0] != "_"}
        raise ValueError(f"invalid optimizer or scheduler settings {values}: {error}") from error

    trainer = cfg.trainer
    stage1 = cfg.schedule.stage1_epochs
    max_epochs = trainer.get("max_epochs")
    if (
        stage1 > 0
        and cfg.granularity.psum_quant
        and not trainer.get("fast_dev_run")
        and max_epochs not in (None, -1)
        and stage1 >= max_epochs
    ):
        raise ValueError(
            f"schedule.stage1_epochs={stage1} must be smaller than trainer.max_epochs={max_epochs}: "
            "otherwise stage 2 (partial-sum quantization) never starts. Lower schedule.stage1_epochs, "
            "raise trainer.max_epochs, or use schedule=one_stage."
        )

    check_checkpoint_intervals(cfg.checkpoint.every_minutes, cfg.checkpoint.every_n_steps)

    init_from = cfg.model.get("init_from")
    if init_from is not None and not Path(init_from).is_file():
        raise FileNotFoundError(
            f"model.init_from={init_from!r} does not exist. Point it at a float checkpoint (a Lightning .ckpt "
            "or a state_dict), produce one with `python -m cimexp.train cim=none ...` (README: float checkpoint), "
            "or set model.init_from=null to train from scratch."
        )

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and _relaunches_script(trainer):
        raise ValueError(
            f"trainer strategy {trainer.strategy!r} with devices={trainer.devices} cannot run inside a Hydra "
            "multirun (-m): Lightning starts the other ranks by re-running the command line, which would rerun "
            "the whole sweep. Run the jobs one at a time, or set trainer.strategy=ddp_spawn."
        )


def _warn_sign_bit_cells(layer: torch.nn.Module) -> None:
    """Warn about column-wise weight steps on a lone sign-bit top cell (1-bit cells, or 4-bit weights on 3-bit
    cells, in two's complement): each split learns its own step there, the sign cell's step drifts away from the
    others and fine-tuning has collapsed to chance in every run we made (README, "Cells whose top cell is a sign
    bit"). Differential encoding or layer/array weight steps train."""
    mapping = getattr(layer, "mapping", None)
    if mapping is not None and mapping.sign_bit_msb and layer.weight_granularity is Granularity.COLUMN:
        warnings.warn(
            f"cell_bits={mapping.cell_bits} with {mapping.magnitude_bits}-bit two's-complement weights leaves a "
            "lone sign bit in the top cell, and column-wise weight steps have not trained in that setting (accuracy "
            "at chance after fine-tuning). Consider cim.weight_encoding=differential or granularity.weight=layer.",
            stacklevel=2,
        )


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"invalid {key}={value!r}; valid choices: {', '.join(choices)}")


def _relaunches_script(trainer: DictConfig) -> bool:
    """Whether Lightning would start ranks > 0 by re-running ``sys.argv`` (DDP's default subprocess launcher).

    Not inside a SLURM job step with several tasks (e.g. ``hydra/launcher=slurm`` with ``tasks_per_node`` > 1):
    SLURM starts every rank itself there.
    """
    if SLURMEnvironment.detect():
        return False
    strategy = trainer.get("strategy")
    if isinstance(strategy, DictConfig):
        is_ddp = str(strategy.get("_target_", "")).endswith("DDPStrategy")
        is_ddp = is_ddp and strategy.get("start_method", "popen") == "popen"
    else:
        is_ddp = strategy == "ddp"
    return is_ddp and (trainer.get("devices") not in (1, "1") or trainer.get("num_nodes", 1) > 1)


def adc_errors(adc: DictConfig) -> ADCErrors:
    """The ADC non-idealities of an ``adc`` config node (``conf/adc_errors/``); a bad value raises ``ValueError``
    naming it."""
    return ADCErrors(**{name: adc[name] for name in ADCErrors.__dataclass_fields__})


def calibration_settings(calibration: DictConfig) -> dict[str, Any]:
    """The step-size calibration of a ``calibration`` config node (``conf/calibration/``) as ``ImageClassifier``
    keyword arguments: ``calibration`` (a :class:`~cimexp.cim.Calibration`), ``calibration_batches`` and
    ``bn_batches``. A bad value raises ``ValueError`` naming it and the valid choices."""
    settings = {key: value for key, value in calibration.items() if key not in ("batches", "bn_batches")}
    batches, bn_batches = calibration.batches, calibration.bn_batches
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"invalid calibration.batches={batches!r}; valid values: an integer >= 1")
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
        raise ValueError(f"invalid calibration.bn_batches={bn_batches!r}; valid values: an integer >= 0 (0: off)")
    return {"calibration": Calibration.parse(settings), "calibration_batches": batches, "bn_batches": bn_batches}


RUN_KEYS = ("init_from", "compile", "compile_mode", "kernels")
"""Keys of the ``model`` node that say how the network is run, not how it is built."""


def build_net(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The network of ``cfg.model`` with its convs built by the ``cfg.cim`` factory; float weights loaded from
    ``cfg.model.init_from`` when set. The CIM layers' fused ADC kernels run as ``cfg.model.kernels`` says
    (:func:`cimexp.cim.set_kernels`); whole-model compilation (``model.compile``) is the LightningModule's."""
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    run = {key: model_cfg.pop(key, None) for key in RUN_KEYS}
    init_from = run["init_from"]
    set_kernels(run["kernels"] or "auto")
    net = instantiate(model_cfg, conv_layer=instantiate(cfg.cim), num_classes=num_classes)
    if init_from is not None:
        load_float_weights(net, init_from)
    return net


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train and validate as configured; write checkpoints, the resolved config, git state and results.json.

    A run directory that already holds results from a finished run of the same config is not trained again (a
    re-launched sweep skips its finished jobs; "same": :func:`cimexp.results.reusable_results`, which refuses a
    finished run of another config with :class:`cimexp.results.StaleRunError`), and one with a
    ``checkpoints/last.ckpt`` but unfinished results resumes from it (a killed or requeued job continues). Both
    only when ``ckpt_path`` is unset: an explicit ``ckpt_path`` always trains, e.g. ``hydra.run.dir=<run dir>
    ckpt_path=last trainer.max_epochs=<more>`` continues a finished run.

    Args:
        cfg: a config composed from ``conf/train.yaml``; Hydra's runtime config must be set (it is under
            ``@hydra.main``; tests call ``HydraConfig().set_config``).

    Returns:
        ``(metrics, objects)``: the final logged metrics as floats (``val/acc``, ``val/acc_best``, ``train/loss``,
        ...), and the objects built (``cfg``, ``datamodule``, ``module``, ``trainer``, ``callbacks``, ``loggers``,
        ``results``). For a finished run directory: the stored ``final`` metrics, and ``cfg`` and ``results`` only.
    """
    output_dir = Path(cfg.paths.output_dir)
    config = resolved_config(cfg)
    files = {"model.init_from": cfg.model.get("init_from")}
    hashed = hashed_config(config, files)
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        done = reusable_results(output_dir, "train", config, files)
        if done is not None:
            print(f"[cimexp] finished before, not trained again: {output_dir}/results.json", flush=True)
            return done["final"], {"cfg": cfg, "results": done}
        ckpt_path = unfinished_checkpoint(output_dir)
        if ckpt_path is not None:
            print(f"[cimexp] resuming the unfinished run from {ckpt_path}", flush=True)

    validate_config(cfg)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)

    ckpt_path = resolve_ckpt_path(ckpt_path, output_dir)
    if ckpt_path is not None:
        read_checkpoint(ckpt_path)  # a file whose unpickling would run code is refused here, naming it
    git = git_state()
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(config))
        atomic_write_json(output_dir / "git.json", git)

    datamodule = instantiate(cfg.data)
    net = build_net(cfg, datamodule.num_classes)
    set_adc_errors(net, adc_errors(cfg.adc))  # on from the first step: noise-aware training
    module = ImageClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        num_classes=datamodule.num_classes,
        label_smoothing=cfg.loss.label_smoothing,
        no_weight_decay=cfg.no_weight_decay,
        **calibration_settings(cfg.calibration),
        config=config,
        compile_mode=cfg.model.compile_mode if cfg.model.get("compile") else None,
    )
    callbacks = [*_instantiate_all(cfg.get("callbacks")), instantiate(cfg.schedule)]
    loggers: list[Logger] = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        for logger in trainer.loggers:  # not `loggers`: fast_dev_run swaps them for a no-op logger
            logger.log_hyperparams(config)
        start = time.perf_counter()
        stopped: SystemExit | None = None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as exit_:  # Ctrl-C (Lightning exits after the KeyboardInterrupt) or SIGTERM
            stopped = exit_
        wall_time_s = time.perf_counter() - start

        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        results = _results(cfg, config, git, trainer, module, datamodule, metrics, wall_time_s, hashed=hashed)
        if trainer.is_global_zero:
            writer = _find_callback(trainer, ResultsWriter)
            atomic_write_json(writer.path if writer else output_dir / "results.json", results)
            _log_summary(trainer.loggers, results)
            print(_summary_line(results), flush=True)
            if stopped is not None:
                print(_resume_hint(output_dir, results), flush=True)
        if stopped is not None:  # Lightning's SIGTERM exit has no code; a stopped run must not look successful
            raise SystemExit(stopped.code or 1)
    finally:
        finish_wandb(loggers)

    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "module": module,
        "trainer": trainer,
        "callbacks": callbacks,
        "loggers": loggers,
        "results": results,
    }
    return metrics, objects


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config node like ``callbacks`` or ``logger`` (in order)."""
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def _find_callback(trainer: L.Trainer, kind: type[CallbackT]) -> CallbackT | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


def _results(
    cfg: DictConfig,
    config: dict[str, Any],
    git: dict[str, Any],
    trainer: L.Trainer,
    module: ImageClassifier,
    datamodule: L.LightningDataModule,
    metrics: dict[str, float],
    wall_time_s: float,
    *,
    hashed: dict[str, Any],
) -> dict[str, Any]:
    """The content of results.json (a ``train`` record of :mod:`cimexp.results`; ``hashed``: the run's
    :func:`cimexp.results.hashed_config`)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = {k: v for k, v in (hydra_cfg.runtime.choices if hydra_cfg else {}).items() if "hydra" not in k}
    timer = _find_callback(trainer, EpochTimer)
    schedule = _find_callback(trainer, QATSchedule)
    checkpoint = _find_callback(trainer, ModelCheckpoint)
    writer = _find_callback(trainer, ResultsWriter)
    telemetry = _find_callback(trainer, PsumTelemetry)
    history = writer.history if writer is not None else []
    best = max(history, key=lambda r: r.get("val/acc", float("-inf")), default=None)
    model = module.model
    is_cim = any(True for _ in cim_layers(model))
    return make_record(
        "train",
        run_status(trainer.interrupted, metrics),
        hashed,
        run_name=run_name(),
        sweep_group=sweep_group(),
        run_dir=str(Path(cfg.paths.output_dir).resolve()),
        overrides=list(hydra_cfg.overrides.task) if hydra_cfg else [],
        choices=choices,
        git=git,
        model=choices.get("model", config["model"]["_target_"]),
        data=choices.get("data", config["data"]["_target_"]),
        cim=cim_settings(config, model),
        schedule=schedule_summary(schedule),
        adc_errors=adc_errors(cfg.adc).to_dict(),
        variation={
            "train_sigma": float(cfg.variation.train_sigma),
            "level": VariationLevel.parse(cfg.variation.level).value,
        },
        seed=cfg.seed,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        wall_time_s=wall_time_s,
        train_time_s=timer.train_cum_s if timer is not None else None,
        final=metrics,
        best={
            "val/acc": module.val_acc_best,
            "epoch": best["epoch"] if best else None,
            "cum_train_time_s": best.get("cum_train_time_s") if best else None,
        },
        checkpoints={
            "best": (checkpoint.best_model_path or None) if checkpoint else None,
            "last": _last_checkpoint(checkpoint, _find_callback(trainer, RecoveryCheckpoint)),
        },
        cim_summary=cim_summary(model, example_input(datamodule, model), CostModel.from_config(cfg.cost))
        if is_cim
        else None,
        psum_telemetry=telemetry.last if telemetry is not None and telemetry.last else None,
        history=history,
    )


def run_status(interrupted: bool, metrics: dict[str, float]) -> str:
    """``"interrupted"`` (stopped early), ``"diverged"`` (ran to the end, but a final loss or accuracy is not
    finite, e.g. NaN), else ``"finished"``. A diverged run counts as done (a re-launched sweep does not retrain
    it), and reports list it with the skipped runs."""
    if interrupted:
        return "interrupted"
    watched = [v for k, v in metrics.items() if k.endswith(("loss", "loss_epoch", "acc"))]
    return "diverged" if any(not math.isfinite(v) for v in watched) else "finished"


def cim_settings(config: dict[str, Any], model: torch.nn.Module) -> dict[str, Any] | None:
    """The CIM layer settings of a run (its resolved ``cim`` node without ``_target_``/``_partial_``); ``None``
    for a float model."""
    if not any(True for _ in cim_layers(model)):
        return None
    return {k: v for k, v in config["cim"].items() if not k.startswith("_")}


def schedule_summary(schedule: QATSchedule | None) -> dict[str, Any]:
    """``{"name": "one_stage" | "two_stage", "stage1_epochs", "stage2_started_epoch"}`` of a QAT schedule."""
    return {
        "name": "two_stage" if schedule is not None and schedule.two_stage else "one_stage",
        "stage1_epochs": schedule.stage1_epochs if schedule is not None else 0,
        "stage2_started_epoch": schedule.stage2_started_epoch if schedule is not None else None,
    }


def example_input(datamodule: L.LightningDataModule, model: torch.nn.Module) -> torch.Tensor:
    """A zero batch of one image ``[1, 3, S, S]`` (``S`` = the data module's ``image_size``), on the model's
    device; reads no data, so it works before ``setup()`` (e.g. for ``python -m cimexp.cost``)."""
    size = datamodule.image_size
    device = next(model.parameters()).device
    return torch.zeros(1, 3, size, size, device=device)


def _log_summary(loggers: list[Logger], results: dict[str, Any]) -> dict[str, Any]:
    """Put the final/best metrics, times and CIM cost totals into the W&B run summary, and the cost totals
    (``cim/adc_energy_pj``, ...) into every logger; returns the summary."""
    summary = {f"final/{k}": v for k, v in results["final"].items()}
    summary.update({f"best/{k}": v for k, v in results["best"].items() if v is not None})
    summary.update({k: results[k] for k in ("epochs", "wall_time_s", "train_time_s") if results[k] is not None})
    if results["cim_summary"] is not None:
        totals = {f"cim/{k}": v for k, v in results["cim_summary"]["total"].items()}
        summary.update(totals)
        numeric = {k: v for k, v in totals.items() if isinstance(v, int | float)}
        for logger in loggers:
            logger.log_metrics(numeric, step=results["global_step"])
            logger.save()
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(summary)
    return summary


def _last_checkpoint(checkpoint: ModelCheckpoint | None, recovery: RecoveryCheckpoint | None) -> str | None:
    """The newest resume checkpoint on disk: the epoch-end ``last.ckpt`` of ``checkpoint`` or the one ``recovery``
    wrote inside an epoch or when the run was stopped (normally the same file)."""
    written = [checkpoint.last_model_path if checkpoint else ""]
    written.append(str(recovery.path) if recovery is not None and recovery.saved_step is not None else "")
    on_disk = [Path(path) for path in written if path and Path(path).is_file()]
    return str(max(on_disk, key=lambda path: path.stat().st_mtime)) if on_disk else None


def _resume_hint(output_dir: Path, results: dict[str, Any]) -> str:
    """What a stopped run prints: where it stopped and the command that resumes it."""
    overrides = [o for o in results["overrides"] if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    # The run directory holds '=' and ',': Hydra needs it quoted, inside the shell's quotes.
    command = " ".join(["python -m cimexp.train", *map(shlex.quote, overrides), f"\"hydra.run.dir='{output_dir}'\""])
    last = results["checkpoints"]["last"]
    if last is not None:
        start = f"it resumes from its checkpoint {last}"
    else:
        start = "it has no checkpoint yet (stopped before its first batch ended), so this starts it again"
    return (
        f"[cimexp] stopped at step {results['global_step']} (in epoch {results['epochs']}); results.json says "
        f'"interrupted". Launched again into the same directory, {start}:\n  {command}'
    )


def _summary_line(results: dict[str, Any]) -> str:
    cim = results["cim"]
    if cim is None:
        setting = "float"
    else:
        setting = (
            f"W{cim['w_bits']}A{cim['a_bits']} cell{cim['cell_bits']} adc{cim['adc_bits']} "
            f"array{cim['array_size']} w:{cim['weight_granularity']}/p:{cim['psum_granularity']}"
            f"{'' if cim['psum_quant'] else ' (no psum quant)'} {results['schedule']['name']}"
        )
    final_acc = results["final"].get("val/acc")
    train_time = results["train_time_s"]
    return (
        f"[cimexp] {results['model']}/{results['data']} {setting} | epochs {results['epochs']} | "
        f"val/acc {_pct(final_acc)} best {_pct(results['best']['val/acc'])} | "
        f"train {train_time if train_time is None else round(train_time, 1)} s, "
        f"wall {results['wall_time_s']:.1f} s | {results['run_dir']}/results.json"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    metrics, _ = train(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
