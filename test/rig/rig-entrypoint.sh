#!/bin/bash
# Entry point of the e2e-rig container (under catatonit): serve podman's remote API on the
# socket in /run/e2e-rig, a directory bind-mounted from the host.
set -euo pipefail
sock_dir=/run/e2e-rig
mkdir -p "$sock_dir"
rm -f "$sock_dir/podman.sock"
# A previous rig's runtime state (pids, locks) must not survive into this one.
rm -rf /run/containers/storage /run/libpod
exec podman system service --time=0 "unix://$sock_dir/podman.sock"
