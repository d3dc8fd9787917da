# Everything a fresh machine needs: `make demo` runs the demo, `make test` runs the test suite.
# Both create (or reuse) the virtual environment in $(VENV) and install the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slim-installed

.PHONY: demo test install clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,train]"
	touch $(STAMP)

install: $(STAMP)

# --force: demo_output/ is this target's own folder (`make clean` removes it), so `make demo` can be run again
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/slim demo --force

# -rs: every skipped test says why (e.g. where it looked for the Kodak images); --durations=30: the slowest tests, so the suite's time stays in view. OMP_WAIT_POLICY=PASSIVE: idle
# OpenMP threads sleep instead of spinning, which keeps the suite fast on a machine that runs other work too.
# -n auto --dist loadfile (pytest-xdist): one worker per core, a test file's tests on one worker (its module fixtures
# are built once); every test still runs on two threads (tests/conftest.py)
test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest tests -q -rs -p no:cacheprovider --durations=30 -n auto --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info demo_output outputs
