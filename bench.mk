# Benchmark targets (included by the Makefile). Never part of `make test`: the benchmark measures, tests assert.
#   make bench          2,000 tags (50 x 40), 3 rounds, plus 10,000 tags once for memory and run phases:
#                       docs/benchmarks.md + bench/results.json (about 8 min)
#   make bench-10k      10,000 tags (250 x 40), 1 round: bench/results-10k.json (about 10 min)
#   make bench-quick    smoke run with tiny sizes (JSON to the temp directory, docs untouched)
#   make bench BENCH_ARGS="--experiments"   also time other transports / connection counts
export UV_PYTHON_DOWNLOADS ?= never
UV ?= uv
BENCH_RUN ?= $(UV) run --locked python -m bench.run
BENCH_ARGS ?=

.PHONY: bench bench-10k bench-quick bench-deps

# The registry and the naive baseline are Debian packages; say how to get them instead of failing mid-run.
bench-deps: setup
	@command -v docker-registry >/dev/null || { echo "make bench needs docker-registry: apt-get install -y docker-registry" >&2; exit 2; }
	@command -v skopeo >/dev/null || { echo "make bench needs skopeo (the naive baseline): apt-get install -y skopeo" >&2; exit 2; }
	@command -v gcc >/dev/null || { echo "make bench needs gcc (it builds the ceiling, bench/ceiling.c): apt-get install -y gcc libc6-dev" >&2; exit 2; }

bench: bench-deps
	$(BENCH_RUN) $(BENCH_ARGS)

bench-10k: bench-deps
	$(BENCH_RUN) --repos 250 --tags 40 --rounds 1 --memory-tags 0 --out bench/results-10k.json --markdown "" $(BENCH_ARGS)

bench-quick: bench-deps
	$(BENCH_RUN) --quick $(BENCH_ARGS)
