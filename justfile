# lib2expert: from library to expert. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$1", "$2", … and "$@", each one word as the user
# quoted it (`{{flags}}` would be re-split: `--prompt "What is 23 + 58?"` became five words).
set positional-arguments

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
    "{{bin}}/datasets" build --seed "$1" --scale "$2" --out data/default

# Pretrain on the library mix (extra flags go to the binary: just pretrain configs/pretrain.toml default --steps 100)
pretrain config='configs/pretrain.toml' run='default' *flags: build
    "{{bin}}/pretrain" --config "$1" --out "runs/$2/pretrain" --resume "${@:3}"

# Midtrain from the pretrain checkpoint on the high-density mix
midtrain config='configs/midtrain.toml' run='default' *flags: build
    "{{bin}}/midtrain" --config "$1" --init "runs/$2/pretrain" --out "runs/$2/midtrain" --resume "${@:3}"

# Supervised fine-tuning on annotator conversations
sft config='configs/sft.toml' run='default' *flags: build
    "{{bin}}/sft" --config "$1" --init "runs/$2/midtrain" --out "runs/$2/sft" --resume "${@:3}"

# Reinforcement learning (GRPO) against verifiers
rl config='configs/rl.toml' run='default' *flags: build
    "{{bin}}/rl" --config "$1" --init "runs/$2/sft" --out "runs/$2/rl" --resume "${@:3}"

# The whole ladder: datasets → pretrain → midtrain → sft → rl → evaluate → report (complete stages are skipped). Options: run=NAME mix=FILE
pipeline *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    run=default; mix=configs/mixes/pretrain.toml
    for a in "$@"; do
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
    [ -f "$r/eval-rl.json" ] || "$b/evaluate" "$r/rl" --samples 8 --per-kind 100 --out "$r/eval-rl.json"
    "$b/report" "$r"
    echo "report: $r/report.md"

# Run one of the field's claims as an experiment on the default run's checkpoints (no name: list them; e.g. just experiment annotator-ceiling --annotators habit:0.5)
experiment name='' *flags: build
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "${1:-}" ]; then "{{bin}}/experiment" list; else "{{bin}}/experiment" run "$@"; fi

# Evaluate a checkpoint on the held-out tasks, 8 samples per question for pass@k and maj@k (later flags win: --samples 1, --tasks hard, --limit 50, --out FILE)
evaluate checkpoint='runs/default/rl' *flags: build
    "{{bin}}/evaluate" "$1" --samples 8 "${@:2}"

alias eval := evaluate

# Talk to a checkpoint (add --prompt "..." for one answer)
chat checkpoint='runs/default/rl' *flags: build
    "{{bin}}/chat" "$@"

# Serve a checkpoint over the OpenAI HTTP API (add --port, --host, --max-batch, ...)
serve checkpoint='runs/default/rl' *flags: build
    "{{bin}}/serve" "$@"

# Export a checkpoint as a Hugging Face transformers directory
export-hf checkpoint='runs/default/rl' out='exported/default-rl': build
    "{{bin}}/export-hf" "$1" "$2"

# Write runs/<run>/report.md from the run's checkpoints
report run='default': build
    "{{bin}}/report" "runs/$1"

# Benchmarks: machine peak, training and sampling throughput against PyTorch, serving with continuous batching against one request at a time (writes bench/results.json)
bench *flags: build
    [ -f data/default/manifest.json ] || "{{bin}}/datasets" build --out data/default
    "{{bin}}/bench" --python "{{venv}}/bin/python" "$@"

# Print shell completions for every binary (bash, zsh, fish, elvish, powershell): just completions bash > ~/.local/share/bash-completion/completions/lib2expert
completions shell='bash': build
    #!/usr/bin/env bash
    set -euo pipefail
    for b in datasets pretrain midtrain sft rl evaluate chat report export-hf serve bench experiment; do
        "{{bin}}/$b" --completions "$1"
    done

# Remove build outputs, runs and generated data (keeps ./.venv)
clean:
    cargo clean
    rm -rf runs data/default
