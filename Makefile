# make all   : set up .venv and run the pipeline: teacher, the three student variants, the
#              mean-teacher runs (teacher = EMA of the student, frozen, or the student itself),
#              then evaluate.py and report.py (plots/report.md); every run also keeps an EMA
#              of its weights
# make quick : the same sequence on 5,000 training images for 3 epochs (a few minutes on a
#              CPU), in runs/quick/ (checkpoints/ and plots/ inside)
# make test  : set up .venv, lint (ruff) and run the test suite, one worker per core
# make bench : set up .venv and print benchmarks/throughput.py's table (idle machine!)
# make best  : the best student's frozen recipe (experiments/grids/best.toml) on its seeds,
#              each distilling from its seed's teacher, into CKPT; then evaluate.py and
#              report.py of those runs alone in PLOTS/best (hours on a 2-core CPU)
#
# CIFAR10_ROOT=path  torchvision layout or ImageFolder root (default ./data, where
#                    torchvision downloads CIFAR-10 if the network allows)
# SEEDS="0 1 2"      seeds to run (default 0): a teacher per seed, and each seed's students
#                    distil from their own seed's teacher (teacher.pt for seed 0,
#                    teacher_seed<s>.pt else), so the spread over seeds covers both
# CKPT, PLOTS        where the runs go (default checkpoints) and their figures and report
#                    (default plots)
# FLAGS="..."        more flags for every training run, e.g. FLAGS="--precision fp32" (with
#                    a CKPT of its own: else make all trains the runs in checkpoints/ again,
#                    and make best is refused)
# PY=python3         use this interpreter and the packages it has (requirements.txt) instead
#                    of making .venv: an existing environment, a machine without a network
# Safe to rerun: a finished stage is skipped, an interrupted one resumes, and one whose
# recipe (a changed default), data or teacher changed is trained again from the start.
PYTHON ?= python3
VENV := .venv
PY ?= $(VENV)/bin/python
# the stages' prerequisite: .venv, set up, unless PY names another interpreter. make splits
# words at spaces and filter reads '%' as a wildcard, so paths are compared with both as '?'
# (a clone in "my projects/" or "50%/")
space := $(subst ,, )
plain = $(subst %,?,$(subst $(space),?,$(1)))
absolute = $(abspath $(if $(filter /%,$(1)),$(1),$(call plain,$(CURDIR))/$(1)))
SETUP = $(if $(filter $(call absolute,$(VENV))/bin/%,$(call absolute,$(call plain,$(PY)))),\
          $(VENV)/installed)
SEEDS ?= 0
LOSSES := kd+ce kd ce
CKPT ?= checkpoints
PLOTS ?= plots
FLAGS ?=
# The teacher of seed $$s in a stage's loop; sweep.py's {teacher} names it the same way.
TEACHER = $(CKPT)/teacher$$([ $$s = 0 ] || echo _seed$$s).pt

# $(call stage,script,checkpoint,flags): resume the run if its checkpoint exists (or train it
# again if its recipe, data or teacher differ from this command's), else start it
stage = if [ -f "$(2)" ]; then "$(PY)" $(1) --resume --restart-if-changed --out "$(2)" $(3) \
          $(RUN_FLAGS); \
        else "$(PY)" $(1) --out "$(2)" $(3) $(RUN_FLAGS); fi
RUN_FLAGS = --plots-dir "$(PLOTS)" $(FLAGS)

.PHONY: all quick teacher students ema evaluate report best test bench clean-venv
# Each stage uses every core: two at once (make -j) would each run at a fraction of its speed
# and record inflated minutes.
.NOTPARALLEL:

all: report

quick:
	$(MAKE) all CKPT=runs/quick/checkpoints PLOTS=runs/quick/plots \
	  FLAGS="--train-subset 5000 --epochs 3 $(FLAGS)"

$(VENV)/installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	"$(PY)" -m pip install --quiet --upgrade pip -c constraints.txt
	"$(PY)" -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

teacher: $(SETUP)
	@set -e; for s in $(SEEDS); do \
	  $(call stage,train_teacher.py,$(TEACHER),--seed $$s); done

students: teacher
	@set -e; for s in $(SEEDS); do for loss in $(LOSSES); do \
	  $(call stage,train_student.py,$(CKPT)/student_$${loss}_seed$$s.pt,\
	    --loss $$loss --seed $$s --teacher "$(TEACHER)"); \
	done; done

ema: $(SETUP)
	@set -e; for s in $(SEEDS); do \
	  $(call stage,train_ema.py,$(CKPT)/ema_mean-teacher_seed$$s.pt,--seed $$s); \
	  $(call stage,train_ema.py,$(CKPT)/ema_mean-teacher-no-ema_seed$$s.pt,--no-ema --seed $$s); \
	  $(call stage,train_ema.py,$(CKPT)/ema_mean-teacher-no-averaging_seed$$s.pt,\
	    --ema-decay 0 --seed $$s); \
	done

evaluate: students ema
	"$(PY)" evaluate.py "$(CKPT)"/*.pt --plots-dir "$(PLOTS)"

report: evaluate
	"$(PY)" report.py --plots-dir "$(PLOTS)"

# the grid's runs with this command's CKPT, PLOTS and FLAGS (single quotes escaped for the
# shell; sweep.py splits the flags as a shell would)
single_quoted = '$(subst ','\'',$(1))'
BEST_FLAGS = --plots-dir "$(PLOTS)"$(if $(FLAGS), $(FLAGS))
BEST_SWEEP = "$(PY)" sweep.py experiments/grids/best.toml --folder "$(CKPT)" \
  --flags=$(call single_quoted,$(BEST_FLAGS))
# evaluate.py reads the checkpoints from a file, one per line: a folder with a space in its
# name stays one path
best: $(SETUP)
	$(BEST_SWEEP)
	mkdir -p "$(PLOTS)/best"
	$(BEST_SWEEP) --checkpoints > "$(PLOTS)/best/checkpoints.txt"
	"$(PY)" evaluate.py @"$(PLOTS)/best/checkpoints.txt" --plots-dir "$(PLOTS)/best"
	"$(PY)" report.py --plots-dir "$(PLOTS)/best"

# --durations: the slowest tests, named at the end, say where the suite's time goes
test: $(SETUP)
	"$(PY)" -m ruff check .
	"$(PY)" -m pytest -q -n auto --durations=15 tests

bench: $(SETUP)
	"$(PY)" benchmarks/throughput.py --compile --profile
	"$(PY)" benchmarks/throughput.py --allocator

clean-venv:
	rm -rf $(VENV)
