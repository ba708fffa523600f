#!/usr/bin/env bash
# kubectl for tests/test_kubernetes.py, which renders deploy/kubernetes with `kubectl kustomize`
# (no cluster is contacted); a no-op where kubectl is already there.
set -euo pipefail
if command -v kubectl >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
kubectl version --client
# The manifests need kustomize v5 (kubectl >= 1.27). Debian bookworm's kubernetes-client is 1.20,
# whose kustomize v2 cannot render them: say so here, and tests/test_kubernetes.py fails.
minor=$(kubectl version --client -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+"))')
if [ "$minor" -lt 27 ]; then
  echo "warning: kubectl 1.$minor is too old to render deploy/kubernetes (kubectl >= 1.27 needed)" >&2
fi
