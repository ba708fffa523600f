#!/usr/bin/env bash
# A Docker engine and the local base images for tests/test_docker.py (no registry image can be
# pulled in CI): ../shared/docker/local-base.sh installs Debian's docker.io, starts dockerd and
# builds local/bookworm-py:base and local/torch-cpu:2.13 (3-4 minutes the first time, seconds
# afterwards). The daemon it starts is stopped again here; the test starts and stops its own.
set -euo pipefail
cd "$(dirname "$0")/.."
base_script=../shared/docker/local-base.sh
if [ ! -f "$base_script" ]; then  # without it tests/test_docker.py cannot run: CI must not pass
  echo "setup-docker: $base_script not found: no Docker engine or base images for tests/test_docker.py" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
running_before=0
if [ -x /usr/bin/docker ] && $sudo /usr/bin/docker info >/dev/null 2>&1; then
  running_before=1
fi
$sudo bash "$base_script"
if [ "$running_before" -eq 0 ] && [ -s /var/run/docker.pid ]; then
  pid=$($sudo cat /var/run/docker.pid)  # the dockerd that local-base.sh started
  $sudo kill -TERM "$pid"
  for _ in $(seq 60); do $sudo kill -0 "$pid" 2>/dev/null || break; sleep 1; done
fi
