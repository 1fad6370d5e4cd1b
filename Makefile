# The course's commands. `make` lists them.

HOST ?= 127.0.0.1
PORT ?= 5000
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_STAMP := node_modules/.package-lock.json

# The course's steps, their parents, vendor files and exercises, from steps.toml (the only place
# that names them), as make variables: step_numbers, step_dir_NN, parent_NN, grafts_NN,
# vendor_NN and exercise_ids. Made again whenever steps.toml changes.
include .make/steps.mk
.make/steps.mk: steps.toml toolkit/course.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "The course needs Python >= 3.11; set PYTHON=/path/to/python3.x" >&2; exit 1; }
	@mkdir -p $(@D) && $(PYTHON) -m toolkit.course make > $@.new && mv $@.new $@

step_dir = $(step_dir_$(1))

.DEFAULT_GOAL := help
.SECONDARY:  # keep the set-up stamps: they are what makes the second run fast
.PHONY: help test test-fast lint lab pictures bench bench-quick diff diff-all clean vendor tools-09 \
	exercises exercise check watch solution test-exercises

help: ## List the targets
	@echo "Usage: make <target>   (HOST=$(HOST) PORT=$(PORT) can be overridden)"
	@grep -hE '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)/  \1\t\2/; s/%/NN/' | expand -t 20
	@echo "Each step's parent, with which make diff B=NN compares it: $(strip $(foreach step,\
		$(step_numbers),$(if $(parent_$(step)),$(step)<-$(parent_$(step)))))."
	@echo "$(strip $(foreach step,$(step_numbers),$(if $(grafts_$(step)),Step $(step) also takes \
		files from step $(firstword $(grafts_$(step))): make diff B=$(step) compares them with its.)))"

step-%: $(VENV)/.runtime vendor-% ## Serve step NN at http://HOST:PORT, e.g. make step-01
	@test -n "$(call step_dir,$*)" || { echo "There is no step $* in steps/." >&2; exit 1; }
	@echo "Step $*: open http://$(HOST):$(PORT)/ in your browser (Ctrl-C stops the server)."
	@HOST=$(HOST) PORT=$(PORT) $(PY) $(call step_dir,$*)/app.py

# Steps 05 and 09 run their Procfile with honcho, from the step's folder, with the Redis at
# REDIS_URL if one answers there, otherwise with the Procfile's own redis on a free port. Ctrl-C
# stops every process (honcho then exits with 130, which is no error here).
REDIS_URL ?= redis://127.0.0.1:6379/0
redis_answers = $(CURDIR)/$(PY) -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).ping()' \
	$(REDIS_URL) 2>/dev/null
free_ports = $(CURDIR)/$(PY) -c 'import socket, sys; s = [socket.socket() for _ in sys.argv[1:]]; \
	[x.bind(("127.0.0.1", 0)) for x in s]; print(*(x.getsockname()[1] for x in s))'
honcho = PATH="$(CURDIR)/$(VENV)/bin:$$PATH" honcho start
define NEED_05
No Redis answers at $(REDIS_URL), and there is no redis-server here to start a private one.
Install Redis, then run this again:
  Debian or Ubuntu:  sudo apt-get install redis-server
  macOS (Homebrew):  brew install redis
Or point REDIS_URL at a Redis you already run: REDIS_URL=redis://host:6379/0 make step-05
endef
export NEED_05

# Two servers: honcho's -c server=2 gives the first PORT and the second PORT+1.
step-05: $(VENV)/.runtime vendor-05 ## Serve step 05: two servers sharing Redis, on PORT and PORT+1
	@cd $(call step_dir,05) && set -- $$($(free_ports) redis) && \
	if $(redis_answers); then redis_url=$(REDIS_URL) processes=server; \
	else command -v redis-server >/dev/null || { echo "$$NEED_05" >&2; exit 1; }; \
		redis_url=redis://127.0.0.1:$$1/0 processes="server redis"; \
		echo "No Redis answers at $(REDIS_URL): starting a private one on port $$1."; fi && \
	echo "Two servers share $$redis_url: open http://$(HOST):$(PORT)/ and http://$(HOST):$$(($(PORT) + 1))/" && \
	echo "Ctrl-C stops everything." && \
	{ HOST=$(HOST) PORT=$(PORT) REDIS_URL=$$redis_url REDIS_PORT=$$1 \
		$(honcho) -c server=2 $$processes || test $$? -eq 130; }

# Step 09: nginx on these ports, in front of two app servers on free ports.
HTTPS_PORT ?= 8443
HTTP_PORT ?= 8080
define NEED_09
make installs nothing system-wide. Install them, then run make step-09 again:
  Debian or Ubuntu:  sudo apt-get install nginx openssl redis-server
  macOS (Homebrew):  brew install nginx openssl redis
On Debian and Ubuntu the nginx package also starts a system-wide nginx on port 80, which
step 09 does not use: sudo systemctl disable --now nginx stops it.
endef
export NEED_09

step-09: $(VENV)/.runtime vendor-09 tools-09 $(addprefix $(call step_dir,09)/instance/,localhost.pem redis_password) ## Serve step 09: nginx (HTTPS, HTTP/2) before two app servers
	@cd $(call step_dir,09) && set -- $$($(free_ports) app1 app2 redis) && \
	if $(redis_answers); then redis_url=$(REDIS_URL) processes="app1 app2 nginx"; \
	else redis_url=redis://:$$(cat instance/redis_password)@127.0.0.1:$$3/0 processes=; \
		echo "No Redis answers at $(REDIS_URL): starting a private one on port $$3."; fi && \
	echo "Step 09: open https://localhost:$(HTTPS_PORT)/ (accept the self-signed certificate once)." && \
	echo "Ctrl-C stops everything." && \
	{ INSTANCE_PATH=instance HTTPS_PORT=$(HTTPS_PORT) HTTP_PORT=$(HTTP_PORT) APP1_PORT=$$1 \
		APP2_PORT=$$2 REDIS_PORT=$$3 REDIS_URL=$$redis_url $(honcho) $$processes || test $$? -eq 130; }

# Step 10: the production step's stack (step 09) and two
# Celery workers.
step-10: $(VENV)/.runtime vendor-10 tools-09 $(addprefix $(call step_dir,10)/instance/,localhost.pem redis_password) ## Serve step 10: the production step's stack (step 09) and two Celery workers
	@cd $(call step_dir,10) && set -- $$($(free_ports) app1 app2 redis) && \
	if $(redis_answers); then redis_url=$(REDIS_URL) processes="app1 app2 worker1 worker2 nginx"; \
	else redis_url=redis://:$$(cat instance/redis_password)@127.0.0.1:$$3/0 processes=; \
		echo "No Redis answers at $(REDIS_URL): starting a private one on port $$3."; fi && \
	echo "Step 10: open https://localhost:$(HTTPS_PORT)/ (accept the self-signed certificate once)." && \
	echo "Ctrl-C stops everything." && \
	{ INSTANCE_PATH=instance HTTPS_PORT=$(HTTPS_PORT) HTTP_PORT=$(HTTP_PORT) APP1_PORT=$$1 \
		APP2_PORT=$$2 REDIS_PORT=$$3 REDIS_URL=$$redis_url $(honcho) $$processes || test $$? -eq 130; }

tools-09: $(VENV)/.runtime ## Check that nginx, openssl and redis-server (step 09) are here
	@missing=; for tool in nginx openssl; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	command -v redis-server >/dev/null || $(redis_answers) || missing="$$missing redis-server"; \
	test -z "$$missing" || { echo "Step 09 runs real servers, and this machine lacks:$$missing" >&2; \
		echo "$$NEED_09" >&2; exit 1; }

# The password of step 09's private Redis, made once, readable by you alone: without one, anyone
# on the machine could read and inject the chat's traffic (the Procfile hands it to redis-server).
%/redis_password:
	@mkdir -p $(@D)
	umask 077 && openssl rand -hex 24 > $@

# A self-signed certificate for localhost, made once (openssl) in the folder the target names.
%/localhost.pem:
	@mkdir -p $(@D)
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost \
		-addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
		-keyout $(@D)/localhost-key.pem -out $@ 2>/dev/null

# The tests run `make step-05` and `make step-09` too, which need the runtime stamp. Four
# processes share the tests (pytest-xdist): most tests wait on a browser or a server, so four fit
# on two cores. Each module (and each class) runs in one process, so its servers start once; the
# longest go first (tests/conftest.py orders them, --no-loadscope-reorder keeps that order).
PARALLEL := -n 4 --dist loadscope --no-loadscope-reorder

test: $(VENV)/.test $(VENV)/.runtime vendor ## Run every test: fast tier, end-to-end in a browser, notebooks
	@browser=$$(bash tests/find-browser.sh $(PY)) && CHROMIUM_PATH="$$browser" $(PY) -m pytest \
		$(PARALLEL)

test-fast: $(VENV)/.test $(VENV)/.runtime vendor ## Run the tests that need no browser and take no seconds (about a minute)
	$(PY) -m pytest $(PARALLEL) -m "not e2e and not slow"

test-step-%: $(VENV)/.test $(VENV)/.runtime vendor-% ## Run one step's tests and its notebook, e.g. make test-step-01
	@browser=$$(bash tests/find-browser.sh $(PY)) && CHROMIUM_PATH="$$browser" $(PY) -m pytest \
		tests -k "$*_ or Step$* or Notebook$*"

lint: $(VENV)/.test ## Check style (ruff check, ruff format --check) and that notebooks have no outputs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/nbstripout --verify notebooks/*.ipynb

# Notebook 06 drives a Chromium: the one the tests would use (CHROMIUM_PATH), found the same way.
lab: $(VENV)/.notebooks vendor ## Open JupyterLab on the notebooks, to experiment with each step
	@browser=$$(bash tests/find-browser.sh $(PY)) && cd notebooks && \
		CHROMIUM_PATH="$$browser" ../$(VENV)/bin/jupyter lab

# --- exercises: exercises/NN-KK_slug/ (exercises/README.md); the mutations: tests/mutations/ ---

# E=03-01 names exercises/03-01_*/, of step 03; the learner's copy is work/03-01/. The commands
# themselves are in toolkit/progress.py.
exercise_step = $(firstword $(subst -, ,$(E)))
progress = $(PY) -m toolkit.progress
need_exercise = test -n "$(filter $(E),$(exercise_ids))" || { echo "Usage: make $@ E=03-01 \
	(one of: $(exercise_ids); make exercises lists them)" >&2; exit 1; }
with_browser = browser=$$(bash tests/find-browser.sh $(PY)) && CHROMIUM_PATH="$$browser"

exercises: $(VENV)/.test ## List the exercises, with their kind, minutes and your progress
	@$(progress) list

exercise: $(VENV)/.test $(if $(E),vendor-$(exercise_step)) ## Copy exercise E's step into work/E to work in: make exercise E=03-01
	@$(need_exercise)
	@$(progress) start $(E)

check: $(VENV)/.test ## Run exercise E's check on your copy in work/E: make check E=03-01
	@$(need_exercise)
	@$(with_browser) $(progress) check $(E)

watch: $(VENV)/.test ## Run exercise E's check again each time you save a file of work/E
	@$(need_exercise)
	@$(with_browser) $(progress) watch $(E)

solution: $(VENV)/.test ## Print one solution of exercise E: make solution E=03-01
	@$(need_exercise)
	@$(progress) solution $(E)

# exercises/prove.py: every exercise and mutation, on fresh copies of the steps; three processes.
test-exercises: $(VENV)/.test $(VENV)/.runtime vendor ## Prove every exercise and mutation: each test fails and passes where it should
	@$(with_browser) $(PY) -m pytest exercises/prove.py -n 3 -p no:cacheprovider --durations=5

# The READMEs' pictures are screenshots that the page tests take of the real pages when
# PICTURES=1: tests/test_pages.py for steps 01 to 06, tests/test_NN_pages.py for the later steps
# (toolkit/pictures.py takes them). Each test class is one step: STEP="08 09" picks
# TestStep08... and TestStep09...
pictures: $(VENV)/.test $(VENV)/.runtime vendor ## Take the READMEs' pictures again (STEP="08 09": those steps')
	@browser=$$(bash tests/find-browser.sh $(PY)) && PICTURES=1 CHROMIUM_PATH="$$browser" \
		$(PY) -m pytest tests/test_pages.py tests/test_[0-9]*_pages.py -n 2 --dist loadscope \
		-k "Step$(firstword $(STEP)) $(patsubst %,or Step%,$(STEP))"

bench: $(VENV)/.bench ## Measure steps 03 and 04 under load and attack, then 08 and 09 up to 10,000 pages (~40 min): bench/results.md
	$(PY) bench/run.py --out bench/results.json
	$(call bench_report,results,latency)

bench-quick: $(VENV)/.bench ## A two-minute smoke run of the bench: bench/results-quick.md
	$(PY) bench/run.py --quick --out bench/results-quick.json
	$(call bench_report,results-quick,latency-quick)

# The bench's report: notebooks/bench.ipynb run on bench/$(1).json, written as bench/$(1).md with
# its plot in bench/$(2).png.
bench_report = BENCH_RESULTS=$(1).json $(VENV)/bin/jupyter nbconvert --execute --to markdown \
	--no-input --output-dir bench --output $(1) --NbConvertApp.output_files_dir=. \
	--ExtractOutputPreprocessor.output_filename_template='$(2){extension}' notebooks/bench.ipynb

# Each step grows from its parent (steps.toml): `make diff B=07` shows what step 07 changes in
# step 04.
# Step A, or step B's parent. The grafts count only when A is not given.
diff_from = $(or $(A),$(parent_$(B)))
graft_step = $(if $(A),,$(firstword $(grafts_$(B))))
graft_files = $(if $(A),,$(wordlist 2,999,$(grafts_$(B))))

# `make diff` leaves out READMEs and style sheets: the lesson is in the code and the templates.
step_diff = test -n "$(B)" -a -n "$(diff_from)" || \
		{ echo "Usage: make $@ B=02 (against its parent), or make $@ A=01 B=03 (any two)" >&2; exit 1; }; \
	diff -ruN --exclude=vendor --exclude=__pycache__ --exclude=instance \
		$(addprefix --exclude=,$(notdir $(graft_files))) $(1) \
		$(call step_dir,$(diff_from)) $(call step_dir,$(B)); \
	test $$? -le 1 || exit 2; \
	for file in $(graft_files); do \
		diff -uN $(call step_dir,$(graft_step))/$$file $(call step_dir,$(B))/$$file; \
		test $$? -le 1 || exit 2; \
	done

diff: ## Show the code and templates step B changes from its parent (or from step A): make diff B=07
	@$(call step_diff,--exclude=README.md '--exclude=*.css')

diff-all: ## The same diff with READMEs and style sheets, e.g. make diff-all B=07 or A=06 B=07
	@$(call step_diff,)

clean: ## Remove the virtual environment, node_modules and copied front-end files
	rm -rf $(VENV) node_modules steps/*/static/vendor .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- set-up, each done once and redone only when its inputs change ---

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==26.3"  # --group needs pip >= 25.1

# Each group but the runtime also gets the course's toolkit (toolkit/), as an editable package.
$(VENV)/.%: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --group $*
	$(if $(filter-out runtime,$*),$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .)
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
