# Quick start: `make demo` and `make test` create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_IMAGE := examples/sortofclevr.png

.PHONY: demo test bench soak install install-dev proto proto-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(BIN)/python -m reasoning.query $(DEMO_IMAGE) \
	    --query "nearest_to_red(O, S) :- closest(red, O), shape(O, S)." \
	    --query "left_of_blue(O) :- left_of(O, blue)."

# pytest exits 5 when it collects no tests; that is a failure here, not a pass.
test: $(VENV)/.dev
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Relational benchmark on the public Sort-of-CLEVR dev images (rules alone, then the whole
# pipeline), skipped when the folder is absent; then the speed comparisons of `python -m benchmarks`,
# which write docs/benchmarks.json and the table in docs/benchmarks.md.
DEV_SET := ../shared/benchmarks/sortofclevr-dev
bench: $(VENV)/.dev
	@if [ -d $(DEV_SET) ]; then \
	    $(BIN)/python -m reasoning.benchmark sortofclevr $(DEV_SET) --facts ground-truth --min-accuracy 1.0 && \
	    $(BIN)/python -m reasoning.benchmark sortofclevr $(DEV_SET) --min-accuracy 0.99; \
	else \
	    echo "note: $(DEV_SET) is absent; skipping the relational accuracy benchmark"; \
	fi
	$(BIN)/python -m benchmarks --dev-set $(DEV_SET)

# Soak: 10,000 Query calls (server memory growth at most 10%) and 10,000 Extract calls at
# 32 clients with zero failures; writes docs/soak.json and the soak region of docs/benchmarks.md.
soak: $(VENV)/.runtime
	$(BIN)/python -m benchmarks.soak

proto: $(VENV)/.dev
	$(BIN)/python -m service.protogen

proto-check: $(VENV)/.dev
	$(BIN)/python -m service.protogen --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
