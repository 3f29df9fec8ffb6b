# Two set-up commands, each self-contained on a fresh machine (Python 3.11, pip):
#   make quickstart   install into .venv, build the quickstart dataset, eval + stress ela and noise, leaderboard
#   make test         install into .venv (with test extras), run the test suite
PY ?= python3
VENV ?= .venv
EXTRAS ?= sample,faces,eval,dev
BIN = $(VENV)/bin

$(BIN)/bench: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/bench

quickstart: $(BIN)/bench
	$(BIN)/bench validate recipes/build/quickstart.yaml
	$(BIN)/bench build recipes/build/quickstart.yaml --out out/quickstart --overwrite
	$(BIN)/bench eval ela --data out/quickstart --split test --out out/results/ela.json
	$(BIN)/bench eval noise --data out/quickstart --split test --out out/results/noise.json
	$(BIN)/bench stress ela --data out/quickstart --suite recipes/stress/default.yaml --out out/results/ela-stress.json
	$(BIN)/bench stress noise --data out/quickstart --suite recipes/stress/default.yaml --out out/results/noise-stress.json
	$(BIN)/bench leaderboard out/results/ela.json out/results/noise.json out/results/ela-stress.json out/results/noise-stress.json --out out/site

test: $(BIN)/bench
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

.PHONY: install quickstart test
