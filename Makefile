# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Both install what they need first (scripts/setup.sh is idempotent and fast when done).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

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
	.venv/bin/lint-imports
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15

lint: setup
	.venv/bin/ruff check .

bench: setup
	$(PY) bench/train_step.py

# The demo's run folder (make demo trains it again afterwards)
clean-demo:
	rm -rf runs/demo
