# The two commands a newcomer needs: `make demo` and `make test`. Both install first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench-env kafka-up kafka-down clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install
	$(BIN)/safemon demo

test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	deploy/chromium.sh
	$(BIN)/python -m pytest

bench-env: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,profile]'
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet "evidently==0.7.23" "pandas<3"

kafka-up:
	deploy/kafka/kafka.sh start

kafka-down:
	deploy/kafka/kafka.sh stop

clean:
	rm -rf $(VENV) .safemon .pytest_cache
