# conv_ext — what the README tells users to run.
#   make install     install what is missing, build the extension (editable)
#   make test        install, then every test: pytest, the C++ ctest, the CUDA compile checks
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
# wanted, not required: plots (benchmark, example), the example's digits data, and the ONNX
# export check (exporter and runtime). A machine that cannot install them (an offline GPU machine,
# say) still builds, tests (those tests skip) and benchmarks (without --plot output).
OPTIONAL_TOOLS   := matplotlib scikit-learn onnx onnxscript onnxruntime
OPTIONAL_MODULES := matplotlib sklearn onnx onnxscript onnxruntime
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
	  $(PIP) install -q $$missing || echo "== could not install $$missing: no plots / no digits example / no ONNX check; their tests skip"; fi

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
	@if command -v nvcc >/dev/null 2>&1; then $(MAKE) --no-print-directory cuda-check cuda-syntax; \
	else echo "== nvcc not found: CUDA compile checks skipped"; fi

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

# ---------------------------------------------------------------------------------------------
# gpu-check: everything that needs a GPU, in one command that fits one 10-minute device call:
#   build (editable, no downloads, only the local GPU's architecture), the CUDA tests, a
#   compute-sanitizer memcheck over a small subset (torch's caching allocator off, so an
#   out-of-bounds access hits unallocated memory), then the GPU benchmark. Results go to
#   benchmarks/results/<device>-<date>.{md,json,csv}: device, driver, torch, date and the table.
# GPU_BENCH: the suites to time, as suite:dtype:layout:batch:passes (passes as the bench takes them).
# ---------------------------------------------------------------------------------------------
GPU_RESULTS ?= benchmarks/results
GPU_BENCH ?= resnet50:bfloat16:nhwc:32:forward,backward_input,backward_weight \
             resnet50:float32:nhwc:32:forward \
             mobilenet_v2:float16:nhwc:32:forward \
             stem:bfloat16:nhwc:32:forward
GPU_BENCH_EXTRA ?=
SANITIZER ?= compute-sanitizer

.PHONY: gpu-check
gpu-check:
	@$(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device')"
	TORCH_CUDA_ARCH_LIST="$$($(PYTHON) -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
	  MAX_JOBS=$(NPROC) $(PIP) install -q --no-build-isolation --no-deps -e .
	@cd / && $(PYTHON) -c "import conv_ext; i = conv_ext.info(); print(i); assert i['cuda_available'], 'conv_ext was built without CUDA'"
	$(PYTHON) -m pytest -q -m "not slow" tests/test_cuda.py tests/test_cuda_sources.py
	$(PYTHON) -m pytest -q -m "cuda and not slow" tests --ignore=tests/test_cuda.py || [ $$? -eq 5 ]  # 5: none selected
	PYTORCH_NO_CUDA_MEMORY_CACHING=1 $(SANITIZER) --tool memcheck --error-exitcode 1 --print-limit 20 \
	  $(PYTHON) -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
	  -k "test_fast_kernel_matches_reference and (3x3 or stride3_k2 or many_k) and not 3x3_s2 and nhwc and (fp16 or fp32-tf32) or test_depthwise_matches_reference and 3x3 and not s2 and fp16 or test_backward_weight_is_deterministic and fp16 and igemm"
	@mkdir -p $(GPU_RESULTS)
	@set -e; \
	dev=$$($(PYTHON) -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())"); \
	stamp=$$(date -u +%Y%m%d-%H%M); base=$(GPU_RESULTS)/$$dev-$$stamp; \
	{ echo "# conv_ext GPU benchmark: $$dev, $$(date -u '+%Y-%m-%d %H:%M UTC')"; echo; \
	  echo "- device/driver: $$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"; \
	  echo "- torch $$($(PYTHON) -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())')"; \
	  echo "- conv_ext: $$(cd / && $(PYTHON) -c 'import conv_ext; print(conv_ext.info())')"; echo; } > $$base.md; \
	i=0; for spec in $(GPU_BENCH); do \
	  i=$$((i+1)); set -- $$(echo "$$spec" | tr ':' ' '); suite=$$1; dtype=$$2; layout=$$3; batch=$$4; passes=$$5; \
	  echo "## $$suite $$dtype $$layout batch $$batch ($$passes)" >> $$base.md; echo '```' >> $$base.md; \
	  $(PYTHON) -m conv_ext.bench --suite $$suite --device cuda --dtype $$dtype --layout $$layout --batch $$batch \
	    --passes $$passes --json $$base-$$i-$$suite-$$dtype.json --csv $$base-$$i-$$suite-$$dtype.csv \
	    $(GPU_BENCH_EXTRA) | tee -a $$base.md; \
	  echo '```' >> $$base.md; \
	done; \
	$(PYTHON) -c "import json, glob, sys; b = sys.argv[1]; json.dump({f: json.load(open(f)) for f in sorted(glob.glob(b + '-*.json'))}, open(b + '.json', 'w'), indent=1)" $$base; \
	echo "== results: $$base.md $$base.json"

# cuda-emulate: runs the real implicit-GEMM kernels on the host (tests/cpp/igemm_emulate.cpp):
# indexing, layouts and fragment maps checked against a float64 convolution, no GPU needed.
# Slow (one host thread per CUDA thread): minutes on a small machine. CASE=name runs one case,
# CASE=direct the reference/depthwise kernels only, CASE=igemm the tensor-core kernels only.
CUDA_HOME ?= /usr/local/cuda
.PHONY: cuda-emulate
cuda-emulate:
	@mkdir -p $(BUILD)
	g++ -std=c++20 -O1 -pthread -DCONV_EXT_EMULATE -I csrc -I $(CUDA_HOME)/include tests/cpp/igemm_emulate.cpp \
	  -L$(CUDA_HOME)/lib64 -lcudart -Wl,-rpath,$(CUDA_HOME)/lib64 -o $(BUILD)/igemm_emulate
	$(BUILD)/igemm_emulate $(CASE)

# cuda-syntax: the torch side of the CUDA backend (conv2d_cuda.cpp, python_module.cpp with CUDA
# on) checked for syntax against the installed torch's headers, which works with a CPU-only
# wheel too (it lacks the generated c10/cuda/impl/cuda_cmake_macros.h: a stub stands in).
.PHONY: cuda-syntax
cuda-syntax:
	@mkdir -p $(BUILD)/stub/c10/cuda/impl
	@echo '#define C10_CUDA_BUILD_SHARED_LIBS' > $(BUILD)/stub/c10/cuda/impl/cuda_cmake_macros.h
	for f in csrc/cuda/conv2d_cuda.cpp csrc/python_module.cpp; do \
	  g++ -std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Wno-c++20-extensions -DCONV_EXT_WITH_CUDA -I csrc \
	    $$($(PYTHON) -c 'import sysconfig, pybind11, torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"], pybind11.get_include()]))') \
	    -I $(BUILD)/stub -I $(CUDA_HOME)/include $$f || exit 1; \
	done
	@echo "== conv2d_cuda.cpp and python_module.cpp (CUDA on): syntax OK"
