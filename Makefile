# make all   : set up .venv and run the pipeline (today: the teacher)
# make test  : set up .venv and run the test suite
# Data: CIFAR10_ROOT=path (torchvision layout or ImageFolder root); default ./data,
# where torchvision downloads CIFAR-10 if the network allows.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all teacher test clean-venv

all: teacher

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# A finished teacher is not trained again; an interrupted one resumes.
teacher: $(VENV)/installed
	@if [ -f checkpoints/teacher.pt ]; then $(PY) train_teacher.py --resume; \
	 else $(PY) train_teacher.py; fi

test: $(VENV)/installed
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
