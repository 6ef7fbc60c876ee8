# Two commands on a fresh Debian machine with Python 3.11 and root or sudo:
#   make serve   set up everything, then serve the assistant on http://127.0.0.1:8000
#   make test    set up everything, then run the whole test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := espeak-ng sox libsndfile1 libportaudio2 chromium
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast test-slow lint test-resilience setup train-mini eval-mini system-packages clean

serve: $(STAMP)
	$(VENV)/bin/anystream-serve --config deployments/configs/embedded.yaml

# Test tiers (markers in pyproject.toml). The fast tier is the inner loop: unit tests with tiny configs, well under
# two minutes. The slow tier starts Ray, servers, real WebRTC peers and full-size models. `make test` (what CI runs)
# checks the code, then runs every test this machine can run, the fast tier first so a failure shows early.
FAST_TIER := not slow and not gpu and not faults and not soak
SLOW_TIER := (slow or gpu) and not faults and not soak

test: lint test-fast test-slow

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST_TIER)"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "$(SLOW_TIER)"

# Lint, formatting and types; fix most of it with `.venv/bin/ruff check --fix . && .venv/bin/ruff format .`
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Replicas killed mid-turn, and the soak (300 sequential sessions, 20 concurrent for 3 minutes): about 25 minutes on
# 2 cores. SOAK_SESSIONS / SOAK_CONCURRENT / SOAK_MINUTES size the soak; SOAK_JSON=path keeps its figures.
test-resilience: $(STAMP)
	$(PY) -m pytest -q -s -m "faults or soak" tests/resilience

setup: $(STAMP)

# Synthesize the instruction set and train the embedded models into assistant/assets/embedded/ (<= 90 min, 2 cores).
# One BLAS thread for numpy: the augmentation's vector maths runs on two threads already, and OpenBLAS's own threads
# made a dot product 200x slower on a busy 2-core machine. DEVICE=cuda trains the neural stages on a GPU.
DEVICE ?= cpu
train-mini: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m training train --device $(DEVICE)

# Judge them on held-out voices: prints a table, writes eval/results.json.
eval-mini: $(STAMP)
	$(PY) -m training eval

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# torch goes in first and alone: anything installed before it may pull several GB of CUDA torch.
$(STAMP): pyproject.toml | system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[server,edge,train,dev,anygpt,bench]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
