# Two commands take a fresh machine to a running daemon: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml
STAMP := $(VENV)/.nstd-installed

.PHONY: run test install weights bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

install: $(STAMP)

weights: $(STAMP)
	$(BIN)/nstd weights fetch

# Folders of the local example in config.example.yaml; a real install names its own.
run: weights
	@mkdir -p inbox outbox failed processed state
	$(BIN)/nstd run --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
