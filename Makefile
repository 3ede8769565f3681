# conv_ext — what the README tells users to run.
#   make install     install what is missing, build the extension (editable)
#   make test        install, then every test: pytest, the C++ ctest, the CUDA compile check
#   make bench       install, then the default benchmark (table, JSON, CSV and plot in benchmarks/results/)
#   make bench-models  install, then whole networks (ResNet-18/50, MobileNetV2): nn.Conv2d vs converted
#   make example     install, then examples/cnn_basics.py (PNGs in examples/output/)
#
# torch: installed (pinned, CPU build) only when none is importable; an installed torch (a GPU
# machine's CUDA build, say) is kept. With torch present, only missing tools are installed.
PYTHON ?= python3
PIP    := $(PYTHON) -m pip
TORCH_PIN ?= torch==2.13.0
TOOLS  := pybind11 ninja pytest pytest-benchmark hypothesis
# module names of TOOLS, in the same order
TOOL_MODULES := pybind11 ninja pytest pytest_benchmark hypothesis
# wanted, not required: plots (benchmark, example) and the example's digits data. A machine that
# cannot install them (an offline GPU machine, say) still builds, tests (those tests skip) and
# benchmarks (without --plot output).
OPTIONAL_TOOLS   := matplotlib scikit-learn
OPTIONAL_MODULES := matplotlib sklearn
RESULTS := benchmarks/results
BUILD  := build
NPROC  := $(shell nproc 2>/dev/null || echo 2)

.PHONY: deps install test pytest ctest cuda-check bench bench-models example clean

deps:
	@if ! $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	  echo "== installing $(TORCH_PIN) and the tools"; \
	  $(PIP) install -q "$(TORCH_PIN)" $(TOOLS) || exit 1; \
	else \
	  missing=$$($(PYTHON) -c "import importlib.util as u; t='$(TOOLS)'.split(); m='$(TOOL_MODULES)'.split(); print(' '.join(a for a, b in zip(t, m) if u.find_spec(b) is None))"); \
	  if [ -n "$$missing" ]; then echo "== installing $$missing"; $(PIP) install -q $$missing || exit 1; fi; \
	fi
	@missing=$$($(PYTHON) -c "import importlib.util as u; t='$(OPTIONAL_TOOLS)'.split(); m='$(OPTIONAL_MODULES)'.split(); print(' '.join(a for a, b in zip(t, m) if u.find_spec(b) is None))"); \
	if [ -n "$$missing" ]; then echo "== installing $$missing (optional)"; \
	  $(PIP) install -q $$missing || echo "== could not install $$missing: no plots / no digits example; their tests skip"; fi

install: deps
	MAX_JOBS=$(NPROC) $(PIP) install -q --no-build-isolation --no-deps -e .
	@cd / && $(PYTHON) -c "import conv_ext; print('conv_ext', conv_ext.__version__, 'installed:', conv_ext.info())"

pytest: install
	$(PYTHON) -m pytest tests

ctest: install
	cmake -S . -B $(BUILD)/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build $(BUILD)/cmake -j $(NPROC)
	ctest --test-dir $(BUILD)/cmake --output-on-failure

# compiles every .cu with plain nvcc for sm_80 and sm_90 (no GPU and no CUDA torch needed)
cuda-check:
	cmake -S . -B $(BUILD)/cuda-check -G Ninja -DCONV_EXT_CUDA_CHECK=ON >/dev/null
	cmake --build $(BUILD)/cuda-check -j $(NPROC)

test: pytest ctest
	@if command -v nvcc >/dev/null 2>&1; then $(MAKE) --no-print-directory cuda-check; \
	else echo "== nvcc not found: CUDA compile check skipped"; fi

# the default suite on the best device there is (cuda if available, else cpu); {device} in a file
# name becomes cpu or cuda, so a GPU run does not overwrite the CPU results
bench: install
	@mkdir -p $(RESULTS)
	$(PYTHON) -m conv_ext.bench --suite default --device auto \
	  --json '$(RESULTS)/default-{device}.json' --csv '$(RESULTS)/default-{device}.csv' \
	  --md '$(RESULTS)/default-{device}.md' --plot '$(RESULTS)/default-{device}.png'

bench-models: install
	@mkdir -p $(RESULTS)
	$(PYTHON) -m conv_ext.bench --models resnet18,resnet50,mobilenet_v2 --batch 8 --image 112 --device auto \
	  --json '$(RESULTS)/models-{device}.json' --md '$(RESULTS)/models-{device}.md' --plot '$(RESULTS)/models-{device}.png'

example: install
	$(PYTHON) examples/cnn_basics.py

clean:
	rm -rf $(BUILD) *.egg-info conv_ext/*.so
