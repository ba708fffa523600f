#!/usr/bin/env bash
# Fill .whl/ with the wheels the lent GPU machine's image lacks (it has torch, transformers, httpx,
# prometheus-client, rich; not the web stack), for its Python 3.12 on x86-64. Run here, where pip works.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
python3 - <<'PY' | while read -r spec; do
import importlib.metadata as m
names = ["fastapi", "starlette", "uvicorn", "sse-starlette", "pydantic", "pydantic-core", "pydantic-settings",
         "annotated-types", "typing-inspection", "python-dotenv", "httpx-sse", "asgi-lifespan", "annotated-doc"]
for name in names:
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        pass
PY
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec" || echo "could not fetch $spec" >&2
done
ls .whl
