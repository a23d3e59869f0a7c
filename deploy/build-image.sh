#!/bin/sh
# Builds localhost/veil:latest from static musl binaries (see deploy/Containerfile).
# Uses podman, or docker if podman is absent. Run from the repository root.
set -eu
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
cargo build --release --locked --target "$target" --bins
engine=$(command -v podman || command -v docker)
"$engine" build -f deploy/Containerfile -t localhost/veil:latest .
echo "built localhost/veil:latest; load it on the nodes (e.g. podman save | ctr -n k8s.io images import -)"
