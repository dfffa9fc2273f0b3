# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Both install what they need first (scripts/setup.sh is idempotent and fast when done).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test lint bench clean-demo

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/lint-imports
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: setup
	$(PY) bench/train_step.py
