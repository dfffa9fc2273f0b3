# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Both install what they need first (scripts/setup.sh is idempotent and fast when done).
# VENV= is scripts/setup.sh's too: the targets then run with the environment it installed
VENV ?= .venv
# $(value ...): the text as given, never expanded as make syntax (VENV='$(shell cmd)' ran cmd)
override VENV := $(value VENV)
export VENV
export PATH := $(abspath $(VENV))/bin:$(PATH)
# The recipes name the venv as "$$VENV" (the exported variable, expanded by the shell inside
# double quotes), never as $(VENV): make pastes its value into the recipe as shell code, so a
# VENV= holding a quote and a command ran that command
PY := "$$VENV/bin/python"

.PHONY: setup demo test lint bench clean-demo

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The suite's tests are mostly single-threaded builds and simulations: one pytest worker per
# core (pytest-xdist). Whole files go to one worker (--dist loadfile), so a file's module
# fixtures (the CNN builds of tests/test_cnn_hw.py) are built once and the one Ray test never
# meets a second local Ray instance.
test: setup
	"$$VENV/bin/lint-imports"
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15

lint: setup
	"$$VENV/bin/ruff" check .

# --force: the target reruns the bench and replaces its own record. PYTHONPATH: a script's
# folder (bench/) comes first on its path, so without it a VENV= of another checkout would
# import that checkout's code through its editable install
bench: setup
	PYTHONPATH="$$PWD" $(PY) bench/train_step.py --force

# The demo's run folder (make demo trains it again afterwards)
clean-demo:
	rm -rf runs/demo
