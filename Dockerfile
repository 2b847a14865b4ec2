# syntax=docker/dockerfile:1
# kbchat production image: web, workers, scheduler and migrations all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# curl: the compose health checks. No tini: compose runs every service with `init: true`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 kbchat \
    && useradd --system --uid 10001 --gid kbchat --create-home --home-dir /home/kbchat kbchat \
    && python -m venv "$VIRTUAL_ENV" \
    && mkdir -p /app /data/hf \
    && chown -R kbchat:kbchat /app /data

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when the metadata or the lock file changes.
# The CPU index supplies torch (2.13.0+cpu); without it pip would pull the multi-GB CUDA build.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --upgrade pip \
    && pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0" . \
    && python -c "import torch; assert '+cpu' in torch.__version__, torch.__version__"

COPY infra/ infra/
COPY telemetry/ telemetry/
COPY rag/ rag/
COPY usecases/ usecases/
COPY db/ db/
COPY tasks/ tasks/
COPY kbchat/ kbchat/
COPY streamlit_app/ streamlit_app/
COPY pages/ pages/
COPY alembic/ alembic/
COPY alembic.ini ./
COPY demo/ demo/
# Now the real packages (dependencies are already there).
RUN pip install --no-deps -c constraints.txt . \
    && chown -R kbchat:kbchat /app

# PYTHONPATH=/app: imports resolve to this tree, so paths relative to the code (pages/, demo/,
# alembic/) are the ones next to it rather than site-packages.
ENV PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/data/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    KBCHAT_ENVIRONMENT=production \
    KBCHAT_DATA_DIR=/data \
    KBCHAT_DEMO_DIR=/app/demo \
    KBCHAT_WEB_HOST=0.0.0.0 \
    KBCHAT_WEB_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    KBCHAT_MODEL_CACHE_DIR=/opt/kbchat-models

# The default embedder's one-time ONNX int8 export, made here so no container does it at start. Writable by kbchat:
# a deployment that configures another model exports that one there on first use.
RUN KBCHAT_DATA_DIR=/tmp/kbchat-build python -c "from rag.embedding import prepare; prepare()" \
    && rm -rf /tmp/kbchat-build \
    && chown -R kbchat:kbchat /opt/kbchat-models

USER kbchat
EXPOSE 8501

CMD ["kbchat", "web"]
