#!/usr/bin/env bash
# The project's test command (README, CI): build the release artefacts the end-to-end tests
# run under, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
cargo test --release --workspace "$@"
