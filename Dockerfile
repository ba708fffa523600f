# storydiff: the streaming story service (default target `server`) and its training job (`train`).
#
#   docker build -t storydiff .                      # the server: `storydiff serve` on port 8000
#   docker build -t storydiff-train --target train . # accelerate launch -m model_training ...
#
# The base ships a CUDA build of PyTorch; pip keeps it (see the constraint below) and adds the rest.
# Dependencies are installed from pyproject.toml alone, before any source is copied, so editing
# the code rebuilds only the last layers. Pick another base with --build-arg BASE_IMAGE=...
# (it must have Python >= 3.10 and torch installed).
ARG BASE_IMAGE=pytorch/pytorch:2.12.0-cuda12.6-cudnn9-runtime
# The service's numeric user id (numeric so that runAsNonRoot-style checks can verify it); set it
# to yours (--build-arg STORYDIFF_UID=$(id -u)) to write checkpoints into a bind-mounted host dir.
ARG STORYDIFF_UID=10001

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_CONSTRAINT=/etc/storydiff/pip-constraints.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG STORYDIFF_UID
# Pin the base image's torch so that no dependency can swap its CUDA build for another one.
# One unprivileged user; /models and the HF cache exist (and are its own) so that named volumes
# mounted there start out writable by it.
RUN mkdir -p /etc/storydiff \
    && python3 -c "import torch; print(f'torch=={torch.__version__}')" > "$PIP_CONSTRAINT" \
    && useradd --create-home --uid "$STORYDIFF_UID" --shell /bin/bash storydiff \
    && mkdir -p /models /cache/huggingface /workspace \
    && chown storydiff:storydiff /models /cache/huggingface /workspace
ENV HF_HOME=/cache/huggingface

# The package itself, built once into a wheel (it carries app/models/, the shipped default model).
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY model_training ./model_training
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels .

# Runtime dependencies only: pyproject.toml plus empty stand-in packages, then the stand-in goes.
FROM base AS server-deps
WORKDIR /tmp/deps
COPY pyproject.toml ./
RUN mkdir app model_training \
    && touch README.md app/__init__.py model_training/__init__.py \
    && python3 -m pip install "./[cpu]" \
    && python3 -m pip uninstall --yes storydiff \
    && rm -rf /tmp/deps

# The training job: accelerate launch -m model_training --config NAME --output /models/RUN ...
FROM server-deps AS train
WORKDIR /tmp/deps
COPY pyproject.toml ./
RUN mkdir app model_training \
    && touch README.md app/__init__.py model_training/__init__.py \
    && python3 -m pip install "./[train]" \
    && python3 -m pip uninstall --yes storydiff \
    && rm -rf /tmp/deps
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m pip install --no-deps /wheels/*.whl
ARG STORYDIFF_UID
USER ${STORYDIFF_UID}
WORKDIR /workspace
ENTRYPOINT ["accelerate", "launch", "-m", "model_training"]
CMD ["--help"]

# The service (last stage: what a plain `docker build .` gives). STORYDIFF_MODEL, unset here,
# points it at a mounted checkpoint dir or a hub id instead of the shipped default.
FROM server-deps AS server
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m pip install --no-deps /wheels/*.whl
ARG STORYDIFF_UID
USER ${STORYDIFF_UID}
WORKDIR /workspace
ENV STORYDIFF_HOST=0.0.0.0 \
    STORYDIFF_PORT=8000
EXPOSE 8000
# 200 once the model is loaded; 503 (urlopen raises, exit 1) while it loads or if it failed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('STORYDIFF_PORT', '8000'), timeout=4)"]
CMD ["storydiff", "serve"]
