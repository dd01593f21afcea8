# The two commands a newcomer needs: `make demo` and `make test`.
# Plain `make` builds build/datatunnel.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CMAKE_FLAGS ?=
ARGS       ?=

.PHONY: all deps build test demo bench bench-quick chaos asan asan-test format format-check fuzz tidy clean

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# Every test: unit, PostgreSQL, broker, end-to-end and the short chaos run.
# TEST_JOBS suites at a time (each starts its own servers on free ports; the
# chaos run, the longest, is scheduled first).
TEST_JOBS  ?= 2
test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(TEST_JOBS) $(ARGS)

demo: build
	scripts/demo.sh $(ARGS)

bench: build
	@scripts/install-deps.sh --bench
	bench/run.sh $(ARGS)

bench-quick: build
	@scripts/install-deps.sh --bench
	bench/run.sh --quick $(ARGS)

# The long fault run (the short form is part of `make test`).
chaos: build
	$(BUILD)/tests/chaos_test --long $(ARGS)

$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DDATATUNNEL_SANITIZE=ON -DDATATUNNEL_BENCH=OFF

asan: deps $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j $(JOBS)

asan-test: asan
	cd $(ASAN_BUILD) && DATATUNNEL_TIMEOUT_MULTIPLIER=4 ctest --output-on-failure --timeout 1200 $(ARGS)

fuzz:
	@scripts/install-deps.sh --fuzz
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DDATATUNNEL_FUZZ=ON -DDATATUNNEL_TESTS=OFF -DDATATUNNEL_BENCH=OFF
	cmake --build build-fuzz -j $(JOBS) --target fuzz_envelope
	fuzz/run.sh build-fuzz/fuzz/fuzz_envelope $(ARGS)

format:
	git ls-files '*.cc' '*.h' | xargs clang-format -i

format-check:
	git ls-files '*.cc' '*.h' | xargs clang-format --dry-run -Werror

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
