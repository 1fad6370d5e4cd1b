# The course's commands. `make` lists them.

HOST ?= 127.0.0.1
PORT ?= 5000
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_STAMP := node_modules/.package-lock.json

# The front-end files each step serves from its own static/vendor/ (paths inside node_modules/).
vendor_02 := htmx.org/dist/htmx.min.js htmx.org/dist/ext/hx-ws.min.js \
	htmx2/dist/htmx.min.js htmx-ext-ws/dist/ws.min.js htmx1/dist/htmx.min.js
vendor_03 := htmx.org/dist/htmx.min.js htmx.org/dist/ext/hx-ws.min.js
vendor_04 := socket.io-client/dist/socket.io.min.js
vendor_05 := socket.io-client/dist/socket.io.min.js
vendor_06 := htmx.org/dist/htmx.min.js htmx.org/dist/ext/hx-sse.min.js
vendor_07 := socket.io-client/dist/socket.io.min.js

step_dir = $(firstword $(wildcard steps/$(1)_*))
step_numbers = $(patsubst steps/%,%,$(foreach d,$(wildcard steps/[0-9][0-9]_*),$(firstword $(subst _, ,$(d)))))

.DEFAULT_GOAL := help
.SECONDARY:  # keep the set-up stamps: they are what makes the second run fast
.PHONY: help test test-fast lint lab bench bench-quick diff diff-all clean vendor

help: ## List the targets
	@echo "Usage: make <target>   (HOST=$(HOST) PORT=$(PORT) can be overridden)"
	@grep -E '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)/  \1\t\2/; s/%/NN/' | expand -t 20

step-%: $(VENV)/.runtime vendor-% ## Serve step NN at http://HOST:PORT, e.g. make step-01
	@test -n "$(call step_dir,$*)" || { echo "There is no step $* in steps/." >&2; exit 1; }
	@echo "Step $*: open http://$(HOST):$(PORT)/ in your browser (Ctrl-C stops the server)."
	@HOST=$(HOST) PORT=$(PORT) $(PY) $(call step_dir,$*)/app.py

step-05: $(VENV)/.runtime vendor-05 ## Serve step 05: two servers sharing Redis, on PORT and PORT+1
	@HOST=$(HOST) PORT=$(PORT) $(PY) $(call step_dir,05)/run.py

test: $(VENV)/.test vendor ## Run every test: fast tier, end-to-end in a browser, notebooks
	@browser=$$(bash tests/find-browser.sh $(PY)) && CHROMIUM_PATH="$$browser" $(PY) -m pytest

test-fast: $(VENV)/.test vendor ## Run the tests that need no browser (notebooks included)
	$(PY) -m pytest -m "not e2e"

test-step-%: $(VENV)/.test vendor-% ## Run one step's tests and its notebook, e.g. make test-step-01
	@browser=$$(bash tests/find-browser.sh $(PY)) && CHROMIUM_PATH="$$browser" $(PY) -m pytest \
		$(wildcard tests/test_$*_*.py) tests/test_notebooks.py -k "$*_ or not notebook"

lint: $(VENV)/.test ## Check style (ruff check, ruff format --check) and that notebooks have no outputs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

lab: $(VENV)/.notebooks vendor ## Open JupyterLab on the notebooks, to experiment with each step
	cd notebooks && ../$(VENV)/bin/jupyter lab

bench: $(VENV)/.bench ## Measure steps 03 and 04 under load, 3 rounds (~15 min): bench/results.md
	$(PY) bench/run.py --out bench/results.json
	$(call bench_report,results,latency)

bench-quick: $(VENV)/.bench ## A one-minute smoke run of the bench: bench/results-quick.md
	$(PY) bench/run.py --quick --out bench/results-quick.json
	$(call bench_report,results-quick,latency-quick)

# The bench's report: notebooks/bench.ipynb run on bench/$(1).json, written as bench/$(1).md with
# its plot in bench/$(2).png.
bench_report = BENCH_RESULTS=$(1).json $(VENV)/bin/jupyter nbconvert --execute --to markdown \
	--no-input --output-dir bench --output $(1) --NbConvertApp.output_files_dir=. \
	--ExtractOutputPreprocessor.output_filename_template='$(2){extension}' notebooks/bench.ipynb

# `make diff` leaves out READMEs and style sheets: the lesson is in the code and the templates.
step_diff = test -n "$(A)" -a -n "$(B)" || { echo "Usage: make $@ A=01 B=02" >&2; exit 1; }; \
	diff -ruN --exclude=vendor --exclude=__pycache__ $(1) $(call step_dir,$(A)) $(call step_dir,$(B)); \
	test $$? -le 1

diff: ## Show the code and templates step B changes from step A, e.g. make diff A=01 B=02
	@$(call step_diff,--exclude=README.md '--exclude=*.css')

diff-all: ## The same diff with READMEs and style sheets, e.g. make diff-all A=01 B=02
	@$(call step_diff,)

clean: ## Remove the virtual environment, node_modules and copied front-end files
	rm -rf $(VENV) node_modules steps/*/static/vendor .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- set-up, each done once and redone only when its inputs change ---

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "The course needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"  # --group needs pip >= 25.1

$(VENV)/.%: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --group $*
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "The course needs Node.js with npm (https://nodejs.org)." >&2; exit 1; }
	npm ci --no-audit --no-fund
	@touch $@

# Copying a handful of files is cheap, so it runs every time and never goes stale.
vendor-%: $(NODE_STAMP) ## Copy step NN's front-end files from node_modules into its static/vendor/
	@for file in $(vendor_$*); do \
		install -D -m 644 node_modules/$$file $(call step_dir,$*)/static/vendor/$$file || exit 1; \
	done

vendor: $(addprefix vendor-,$(step_numbers)) ## Copy every step's front-end files
