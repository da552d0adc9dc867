# lib2expert: from library to expert. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
export VIRTUAL_ENV := venv
export PATH := venv / "bin" + ":" + env_var("PATH")
export LIBTORCH_USE_PYTORCH := "1"
bin := justfile_directory() / "target/release"

# List the recipes
default:
    @just --list --unsorted

# Create ./.venv with torch==2.11.0 from PyPI (for libtorch) when missing; does nothing when present
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x "{{venv}}/bin/python" ] && "{{venv}}/bin/python" -c "import torch, tokenizers, numpy, transformers, openai; assert torch.__version__.split('+')[0] == '2.11.0'" 2>/dev/null; then
        exit 0
    fi
    echo "setup: installing torch==2.11.0 into {{venv}} (about 1 minute, 4.6 GB)"
    [ -x "{{venv}}/bin/python" ] || python3 -m venv "{{venv}}"
    "{{venv}}/bin/python" -m pip install --quiet --upgrade pip
    "{{venv}}/bin/python" -m pip install --quiet -r requirements.txt

# Build every binary in release mode (rpath to the venv's libtorch: no LD_LIBRARY_PATH needed)
build: setup
    cargo build --release --workspace

# Run the test suite (format check + all tests, release profile)
test: setup
    cargo fmt --all -- --check
    cargo test --release --workspace

# Lint: clippy with warnings as errors
lint: setup
    cargo clippy --release --workspace --all-targets -- -D warnings

# Format the code
fmt:
    cargo fmt --all

# Everything CI checks
ci: test lint

# Generate the embedded default world (Parquet + tokenizer) under data/default
datasets seed='1337' scale='small': build
    {{bin}}/datasets build --seed {{seed}} --scale {{scale}} --out data/default

# Pretrain on the library mix
pretrain config='configs/pretrain.toml' run='default' *flags='': build
    {{bin}}/pretrain --config {{config}} --out runs/{{run}}/pretrain --resume {{flags}}

# Midtrain from the pretrain checkpoint on the high-density mix
midtrain config='configs/midtrain.toml' run='default' *flags='': build
    {{bin}}/midtrain --config {{config}} --init runs/{{run}}/pretrain --out runs/{{run}}/midtrain --resume {{flags}}

# Supervised fine-tuning on annotator conversations
sft config='configs/sft.toml' run='default' *flags='': build
    {{bin}}/sft --config {{config}} --init runs/{{run}}/midtrain --out runs/{{run}}/sft --resume {{flags}}

# Reinforcement learning (GRPO) against verifiers
rl config='configs/rl.toml' run='default' *flags='': build
    {{bin}}/rl --config {{config}} --init runs/{{run}}/sft --out runs/{{run}}/rl --resume {{flags}}

# The whole ladder: datasets → pretrain → midtrain → sft → rl → eval → report (complete stages are skipped). Options: run=NAME mix=FILE
pipeline *args='': build
    #!/usr/bin/env bash
    set -euo pipefail
    run=default; mix=configs/mixes/pretrain.toml
    for a in {{args}}; do
        case "$a" in
            run=*) run="${a#run=}" ;;
            mix=*) mix="${a#mix=}" ;;
            *) echo "pipeline: unknown argument '$a' (expected run=NAME or mix=FILE)" >&2; exit 2 ;;
        esac
    done
    b="{{bin}}"; r="runs/$run"
    [ -f data/default/manifest.json ] || "$b/datasets" build --out data/default
    "$b/pretrain" --config configs/pretrain.toml --mix "$mix" --out "$r/pretrain" --resume
    "$b/midtrain" --config configs/midtrain.toml --init "$r/pretrain" --out "$r/midtrain" --resume
    "$b/sft" --config configs/sft.toml --init "$r/midtrain" --out "$r/sft" --resume
    "$b/rl" --config configs/rl.toml --init "$r/sft" --out "$r/rl" --resume
    [ -f "$r/eval-rl.json" ] || "$b/eval" "$r/rl" --samples 8 --per-kind 100 --out "$r/eval-rl.json"
    "$b/report" "$r"
    echo "report: $r/report.md"

# Run one of the field's claims as an experiment on the default run's checkpoints (no name: list them)
experiment name='' *flags='': build
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "{{name}}" ]; then "{{bin}}/experiment" list; else "{{bin}}/experiment" run "{{name}}" {{flags}}; fi

# Evaluate a checkpoint on the held-out tasks (pass@k and maj@k with samples > 1)
eval checkpoint='runs/default/rl' samples='8': build
    {{bin}}/eval {{checkpoint}} --samples {{samples}}

# Talk to a checkpoint (add --prompt "..." for one answer)
chat checkpoint='runs/default/rl' *flags='': build
    {{bin}}/chat {{checkpoint}} {{flags}}

# Serve a checkpoint over the OpenAI HTTP API (add --port, --host, --max-batch, ...)
serve checkpoint='runs/default/rl' *flags='': build
    {{bin}}/serve {{checkpoint}} {{flags}}

# Write runs/<run>/report.md from the run's checkpoints
report run='default': build
    {{bin}}/report runs/{{run}}

# Benchmarks: machine peak, training and sampling throughput against PyTorch, serving with continuous batching against one request at a time (writes bench/results.json)
bench *flags='': build
    [ -f data/default/manifest.json ] || {{bin}}/datasets build --out data/default
    {{bin}}/bench --python "{{venv}}/bin/python" {{flags}}

# Remove build outputs, runs and generated data (keeps ./.venv)
clean:
    cargo clean
    rm -rf runs data/default
