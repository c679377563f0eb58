# vmfs2vhd — build, test, demo, benchmarks, fuzzing.
# `make test` is what CI runs (through .ci/run); bench and fuzz are not part of it.

GO        ?= go
BIN       ?= vmfs2vhd
COMMIT    := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CLIPKG    := github.com/vmfs2vhd/vmfs2vhd/internal/cli
LDFLAGS   := -s -w -X $(CLIPKG).version=$(VERSION) -X $(CLIPKG).commit=$(COMMIT)
export CGO_ENABLED = 0

# Test time budget: the whole suite must stay well under 15 minutes on 2 cores.
TEST_TIMEOUT ?= 14m
FUZZTIME     ?= 60s
# go test minimizes every new interesting input for up to -fuzzminimizetime
# (60s by default) before reporting it; on the multi-KiB VMDK seeds that is
# all the time there is, and the status line shows 0 execs/sec.
FUZZMINIMIZETIME ?= 1s
DEMO_DIR     ?= demo-out

.PHONY: all build test demo bench fuzz lint cross clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# -parallel 4: the oracle tests wait on FUSE round trips and child processes.
test:
	$(GO) vet ./...
	$(GO) test -timeout $(TEST_TIMEOUT) -parallel 4 ./...

demo: build
	./$(BIN) demo $(DEMO_DIR)

# Issue 7: times convert against vmfs-fuse + qemu-img and qemu-img on a plain copy; writes
# bench/results.md. Needs qemu-img, vmfs-fuse, vmfs6-fuse (root for FUSE); e.g. BENCH_FLAGS='-quick -reps 1'.
bench: build
	$(GO) run ./bench $(BENCH_FLAGS)

# Runs every fuzz target for FUZZTIME each (go test allows one target per run).
# Found crashers land in the package's testdata/fuzz/FuzzX/ and are replayed
# by `go test`: fix the bug, keep the file.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg; \
	  done; \
	done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above are not formatted"; exit 1; }
	$(GO) vet ./...

# Users rescue VMs from whatever laptop is at hand: pure Go, every OS.
cross:
	@set -e; for t in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64; do \
	  os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  echo "== $$t"; GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/$(BIN)-$$os-$$arch$$ext .; \
	done

clean:
	rm -rf $(BIN) dist $(DEMO_DIR)
