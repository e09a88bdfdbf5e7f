# The README's two commands: `make demo` and `make test`. Both create .venv and install
# the project with every framework; nothing has to be installed by hand first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test zoo bench fixtures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) fixtures/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

zoo: $(STAMP)
	$(PY) -m pytest -m zoo -s -v

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/dcp.py
	$(PY) bench/inspect_large.py
	$(PY) bench/startup.py

fixtures: $(STAMP)
	$(PY) fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) build *.egg-info
