# LinguaMesh: one image for the scheduler and the node; the command picks the role.
#
#   podman build --format docker -t linguamesh:latest .   (or docker build; podman keeps the
#   HEALTHCHECK only in the docker format)
#   podman run -p 5010:5010 linguamesh:latest scheduler
#   podman run linguamesh:latest node --scheduler ws://scheduler:5010
#   podman run -p 5010:5010 linguamesh:latest up --host 0.0.0.0     (all in one, for a try)
#
# The default offline engines are inside (Whisper base, Apertium en<->es, Piper and
# espeak-ng voices): a node from this image translates with no model download.
# Behind a proxy that intercepts TLS, give pip its CA as a build secret:
#   podman build --secret id=pip-ca,src=/path/to/ca-bundle.crt -t linguamesh:latest .
# See docs/operations.md ("Container image").

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
# --build-arg CUDA=true: nodes on NVIDIA GPUs (cuBLAS and cuDNN 9 for CUDA 12 from NVIDIA's
# pip wheels, about 1.5 GB more; the driver and nvidia-smi come from the host's container
# toolkit). docs/gpu.md.
ARG CUDA=false

# ---------------------------------------------------------------- build: a venv in /opt/linguamesh
FROM ${BASE_IMAGE} AS build
ARG CUDA
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/linguamesh
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    /opt/linguamesh/bin/pip install --no-cache-dir --disable-pip-version-check ".[engines]" \
 && if [ "$CUDA" = true ]; then \
      /opt/linguamesh/bin/pip install --no-cache-dir --disable-pip-version-check \
        "nvidia-cublas-cu12>=12.4,<13" "nvidia-cudnn-cu12>=9.1,<10"; \
    fi \
 && /opt/linguamesh/bin/python -m compileall -q /opt/linguamesh/lib

# ---------------------------------------------------------------- run: the venv, the system engines, a user
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 tini ca-certificates libsndfile1 espeak-ng apertium apertium-eng-spa \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 linguamesh \
 && useradd --system --uid 10001 --gid linguamesh --home-dir /var/lib/linguamesh --create-home \
      --shell /usr/sbin/nologin linguamesh
COPY --from=build /opt/linguamesh /opt/linguamesh
ENV PATH=/opt/linguamesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    LINGUAMESH_HOST=0.0.0.0 \
    LINGUAMESH_NODE_METRICS_HOST=0.0.0.0 \
    LINGUAMESH_NODE_METRICS_PORT=9310 \
    LD_LIBRARY_PATH=/opt/linguamesh/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/linguamesh/lib/python3.11/site-packages/nvidia/cudnn/lib
USER 10001:10001
WORKDIR /var/lib/linguamesh
# 5010: the scheduler (clients, nodes, pages, /metrics); 9310: a node's /healthz, /readyz, /metrics
EXPOSE 5010 9310
# whichever role runs answers on its port (linguamesh healthcheck tries both)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["linguamesh", "healthcheck"]
# tini is PID 1: it passes SIGTERM on (a scheduler or node drains) and reaps children
ENTRYPOINT ["/usr/bin/tini", "--", "linguamesh"]
CMD ["up", "--host", "0.0.0.0"]
