# Two set-up-free entry points for a fresh machine with Python 3 and make:
#   make demo   -> creates .venv, installs pinned requirements, runs scripts/train_pool3fc.py on the demo set
#   make test   -> creates .venv, installs pinned requirements, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ku-installed

.PHONY: setup test demo bench clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# the modules whose tests also run on the JAX backend (TensorFlow-only tests are marked and skip)
JAX_TESTS = tests/test_theme_embedding.py tests/test_losses.py tests/test_optimizers.py \
	tests/test_area_pooling.py tests/test_roi_pooling.py tests/test_spp.py tests/test_layer_contract.py \
	tests/test_heads.py tests/test_masking.py tests/test_mlsp_model.py tests/test_apm.py tests/test_theme_roi.py \
	tests/test_extraction.py tests/test_size_policy.py tests/test_image_modification.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20 tests
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10 $(JAX_TESTS)

demo: $(STAMP)
	$(BIN)/python scripts/train_pool3fc.py

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
