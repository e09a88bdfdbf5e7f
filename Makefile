# The README's two commands: `make demo` and `make test`. Both create .venv and install
# the project with every framework; nothing has to be installed by hand first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test fuzz zoo faults bench fixtures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# tf_keras (Keras 2, for the zoo's legacy files) declares the full `tensorflow` package; it runs on
	# tensorflow-cpu, so it goes in without its dependencies.
	$(PY) -m pip install --quiet --no-deps 'tf_keras==2.21.*'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) fixtures/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

# The fuzz campaigns of `make test`, longer: FUZZ_EXAMPLES inputs per format, a seed of its own, a summary
# in fuzz-report.json; the files of each bug found are kept under $$TMPDIR/surgery-fuzz-crashes (tests/fuzz/README.md).
FUZZ_EXAMPLES ?= 5000
FUZZ_SEED     ?= $(shell date +%s)
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_REPORT=fuzz-report.json $(PY) -m pytest tests/fuzz -m fuzz -q -p no:cacheprovider \
		--hypothesis-seed=$(FUZZ_SEED)

zoo: $(STAMP)
	$(PY) -m pytest -m zoo -s -v

# kill -9 at random moments of ~200 MB writes (single file, sharded, TF checkpoint); prints the tallies.
faults: $(STAMP)
	$(PY) -m pytest -m faults -s -v tests/faults

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/dcp.py
	$(PY) bench/scale_sim.py
	$(PY) bench/inspect_large.py
	$(PY) bench/startup.py
	$(PY) bench/hostile.py

fixtures: $(STAMP)
	$(PY) fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) build *.egg-info
