# Two set-up commands, each self-contained on a fresh machine (Python 3.11, pip):
#   make quickstart   install into .venv (QUICKSTART_EXTRAS), build the quickstart dataset, train patch-forensics (CPU, ~2 min),
#                     eval + stress it, ela and noise, leaderboard
#   make test         install into .venv (TEST_EXTRAS: every extra, so no test is skipped for a missing package), run the suite
# Both install with `pip install -c constraints.txt`, which pins the torch + torchvision pair of this workplace.
PY ?= python3
VENV ?= .venv
# The portraits, the landmark masker and OpenCV build the set; `train` brings torch + timm for patch-forensics.
QUICKSTART_EXTRAS ?= sample,faces,train
TEST_EXTRAS ?= all,dev
BIN = $(VENV)/bin

# One stamp per set of extras: `make quickstart` then `make test` adds the test extras to .venv
# instead of taking the quickstart's install for a complete one.
$(VENV)/.installed-%: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[$*]"
	touch $@

install: $(VENV)/.installed-$(TEST_EXTRAS)

quickstart: $(VENV)/.installed-$(QUICKSTART_EXTRAS)
	$(BIN)/bench validate recipes/build/quickstart.yaml
	$(BIN)/bench build recipes/build/quickstart.yaml --out out/quickstart --overwrite
	$(BIN)/bench eval ela --data out/quickstart --split test --out out/results/ela.json
	$(BIN)/bench eval noise --data out/quickstart --split test --out out/results/noise.json
	$(BIN)/bench stress ela --data out/quickstart --suite recipes/stress/default.yaml --out out/results/ela-stress.json
	$(BIN)/bench stress noise --data out/quickstart --suite recipes/stress/default.yaml --out out/results/noise-stress.json
	$(BIN)/bench train patch-forensics --data out/quickstart --recipe recipes/train/quickstart.yaml --out out/runs/patch-forensics --overwrite
	$(BIN)/bench eval patch-forensics --weights out/runs/patch-forensics --data out/quickstart --split test --out out/results/patch-forensics.json
	$(BIN)/bench stress patch-forensics --weights out/runs/patch-forensics --data out/quickstart --suite recipes/stress/default.yaml --out out/results/patch-forensics-stress.json
	$(BIN)/bench leaderboard out/results/ela.json out/results/noise.json out/results/ela-stress.json out/results/noise-stress.json out/results/patch-forensics.json out/results/patch-forensics-stress.json --out out/site

test: $(VENV)/.installed-$(TEST_EXTRAS)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

.PHONY: install quickstart test
