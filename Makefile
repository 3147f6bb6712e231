# `make help` lists the targets below from their `## ` comments.
.DEFAULT_GOAL := help
.PHONY: help install test test-slow medium medium-readings networks soak wheel-smoke train bench bench-net gpu-check lint granularity_grid dequant qat_schedules variation \
	imagenet_table3 sweeps adc_energy noise_aware variation_aware adc_noise post_training

# The project's virtual environment when there is one, else the python on PATH.
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
# Extra command-line arguments, e.g. make train ARGS="granularity=layer_layer trainer.max_epochs=1"
ARGS ?=
# Preset of the paper's sweeps (experiments/sweep/<sweep>/<preset>.yaml): quick (2-core CPU, fine-tuning from the
# float checkpoint) or full (the paper's recipe from scratch, GPUs), e.g. make granularity_grid PRESET=full
PRESET ?= quick

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-17s %s\n", $$1, $$2}'

install: ## Install cimexp and its dev tools, editable: pip install -e ".[dev]"
	$(PYTHON) -m pip install -e ".[dev]"

test: ## Fast test tier (what CI runs): unit tests, every config option, short trainings on synthetic data
	$(PYTHON) -m pytest

test-slow: ## Slow tier: debug profiles, real CIFAR-10 runs as subprocesses, model.compile, DDP on two CPU processes (CIFAR needs CIMEXP_DATA)
	$(PYTHON) -m pytest -m slow

soak: ## Fault-injection soak: a 6-job synthetic sweep SIGKILLed 20 times, relaunched, compared with an uninterrupted one
	$(PYTHON) tests/soak.py --kills 20 --seed 0 --out $$(mktemp -d)

wheel-smoke: ## Build the wheel, install it into a fresh venv, run the entry points from an empty directory (CI)
	PYTHON=$(PYTHON) bash .ci/wheel_smoke

train: ## Train ResNet-20 on CIFAR-10 with the paper's CIM settings; overrides in ARGS="..."
	$(PYTHON) -m cimexp.train $(ARGS)

bench: ## Benchmark the CIM layer (python -m cimexp.bench); options in ARGS="..."
	$(PYTHON) -m cimexp.bench $(ARGS)

bench-net: ## Benchmark a ResNet-20 training step, float vs CIM schemes (cimexp.bench --net); options in ARGS="..."
	$(PYTHON) -m cimexp.bench --net $(ARGS)

lint: ## Ruff lint and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

post_training: ## Post-training calibration table (no training): granularity pairs x methods x ADC bits; ARGS=...
	$(PYTHON) -m cimexp.post_training $(ARGS)

granularity_grid: ## Fig. 7: weight x partial-sum granularity grid, w/o PSQ and float (PRESET=quick|full, ARGS=...)
	$(PYTHON) -m cimexp.train -m sweep=granularity_grid/$(PRESET) $(ARGS)

dequant: ## Fig. 8: accuracy vs dequantization ops: the granularity grid's runs (finished ones are not rerun)
	$(PYTHON) -m cimexp.train -m sweep=dequant/$(PRESET) $(ARGS)

qat_schedules: ## Fig. 9: one- vs two-stage QAT, column/column and layer/column (accuracy vs training time)
	$(PYTHON) -m cimexp.train -m sweep=qat_schedules/$(PRESET) $(ARGS)

variation: ## Fig. 10: the grid's checkpoints under cell variation (python -m cimexp.evaluate; run the grid first)
	$(PYTHON) -m cimexp.evaluate -m sweep=variation/$(PRESET) $(ARGS)

imagenet_table3: ## Table III: the five schemes and float on ResNet-18/ImageNet (full scale only, GPUs)
	$(PYTHON) -m cimexp.train -m sweep=imagenet_table3/full $(ARGS)

sweeps: granularity_grid qat_schedules variation ## All CIFAR sweeps of PRESET, in order (the grid before variation)

MEDIUM_ARGS ?= hydra/launcher=parallel logger=csv trainer.enable_progress_bar=false
MEDIUM_SWEEPS = granularity_grid/medium granularity_grid/medium_3bit qat_schedules/medium granularity_grid/medium_3bit_mse
medium: ## The medium study on 2 cores, in order (relaunch resumes; needs CIMEXP_DATA): Figs. 7, 9, 10, report
	for sweep in $(MEDIUM_SWEEPS); do $(PYTHON) -m cimexp.train -m sweep=$$sweep $(MEDIUM_ARGS) || exit 1; done
	$(PYTHON) -m cimexp.evaluate -m sweep=variation/medium $(MEDIUM_ARGS)
	$(PYTHON) -m cimexp.report $(addprefix logs/sweeps/,$(MEDIUM_SWEEPS) variation/medium) --reference paper \
		--paired-reference column/column --paired-reference layer/column --out experiments/results/medium/report

READINGS_SWEEPS = granularity_grid/medium_weight_grad_scale granularity_grid/medium_untied_lsq granularity_grid/medium_tied_authors granularity_grid/medium_authors
READINGS_REPORT = experiments/results/medium/report/runs.csv $(addprefix logs/sweeps/,$(READINGS_SWEEPS) granularity_grid/medium_3epochs)
medium-readings: ## The quantizer-readings study: the medium grid under quantizer=authors, the isolating runs, then 3 epochs by the declared rule
	$(PYTHON) -m cimexp.train -m sweep=granularity_grid/medium_authors granularity=layer_column,column_column $(MEDIUM_ARGS)
	for sweep in $(READINGS_SWEEPS); do $(PYTHON) -m cimexp.train -m sweep=$$sweep $(MEDIUM_ARGS) || exit 1; done
	reading=$$($(PYTHON) experiments/results/medium/choose_reading.py experiments/results/medium/report/runs.csv \
		logs/sweeps/granularity_grid/medium_authors) || exit 1; \
	$(PYTHON) -m cimexp.train -m sweep=granularity_grid/medium_3epochs quantizer=$$reading $(MEDIUM_ARGS)
	$(PYTHON) -m cimexp.report $(READINGS_REPORT) --reference paper --paired-reference column/column \
		--paired-reference layer/column --out experiments/results/medium/report_readings

NETWORKS ?= vit mobilenetv2 vgg8
NETWORK_TABLE = grid.draws=[0,1,2] grid.weight_methods=[mse] data.val_subset=2000
networks: ## Other networks (needs CIMEXP_DATA): each one's float recipe, export, post-training table over 3 draws
	for net in $(NETWORKS); do \
		$(PYTHON) -m cimexp.train experiment=float_$${net}_cifar10 logger=csv trainer.enable_progress_bar=false \
			hydra.run.dir=logs/float/$${net}_cifar10 || exit 1; \
		out=experiments/results/networks/$$net; \
		[ -f $$out/float.pt ] || $(PYTHON) experiments/results/networks/export_float.py logs/float/$${net}_cifar10 \
			$$out/float.pt || exit 1; \
		pids=; for half in "4 percentile" "3 mse"; do set -- $$half; \
			OMP_NUM_THREADS=1 $(PYTHON) -m cimexp.post_training model=$$net model.init_from=$$out/float.pt \
				grid.adc_bits=[$$1] grid.psum_methods=[$$2] $(NETWORK_TABLE) out_dir=$$out $(ARGS) & pids="$$pids $$!"; \
		done; for pid in $$pids; do wait $$pid || exit 1; done; \
	done

adc_energy: ## Beyond the paper: accuracy vs ADC energy, adc_bits 2..5 x layer/layer, column/column (quick only)
	$(PYTHON) -m cimexp.train -m sweep=adc_energy/$(PRESET) $(ARGS)

noise_aware: ## Beyond the paper: noise-aware training (adc.noise_lsb=0.5), layer/layer and column/column (quick)
	$(PYTHON) -m cimexp.train -m sweep=noise_aware/$(PRESET) $(ARGS)

variation_aware: ## Beyond the paper: variation-aware training (variation.train_sigma=0.2) (quick)
	$(PYTHON) -m cimexp.train -m sweep=variation_aware/$(PRESET) $(ARGS)

adc_noise: ## Beyond the paper: plain vs noise-aware checkpoints under ADC noise (cimexp.evaluate; train both first)
	$(PYTHON) -m cimexp.evaluate -m sweep=adc_noise/$(PRESET) $(ARGS)

gpu-check: ## Everything that needs a GPU, one summary table: cuda tests, bench (eager, CUDA graphs), paper-recipe epochs
	$(PYTHON) .ci/gpu_check.py $(ARGS)
