# Fresh-machine entry points. torch is installed first from its pinned CPU wheel so that
# pip does not resolve a plain `torch` requirement to the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/seisbench-feq demo --out demo_output

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_output .pytest_cache site

docs: install
	$(VENV)/bin/mkdocs build --strict
