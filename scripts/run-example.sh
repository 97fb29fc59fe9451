#!/bin/sh
# Fresh Debian 12: install dependencies, build, and run kumod in the
# foreground with the bundled example policy (listening on 127.0.0.1:2025).
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
mkdir -p /var/tmp/kumod
exec build/kumod --policy policy/init.lua
