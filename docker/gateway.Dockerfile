# syntax=docker/dockerfile:1
# The streaming gateway (serving/) under gunicorn, for the tfserving backend in a cluster (k8s/) or the local
# backend with a model directory mounted. Built from the repository root by `make images`:
#   docker build -f docker/gateway.Dockerfile -t registry.example.com/charlm/gateway:0.1.0 .
# Only requirements.txt, serving/ and analysis/ enter the build context (.dockerignore).

# Dependencies go into a virtual environment in a build stage; the final stage gets the environment only.
# The Python the project develops with (3.11), at a pinned patch release; both stages use the same image.
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --requirement /tmp/requirements.txt

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 charlm \
    && useradd --system --uid 10001 --gid charlm --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin charlm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY serving/ serving/
COPY analysis/ analysis/
COPY model_interface/ model_interface/
# Bytecode now: the container's root filesystem is read-only (k8s/), so Python could not cache it later.
RUN /opt/venv/bin/python -m compileall -q serving analysis
# PORT makes gunicorn bind 0.0.0.0:$PORT (serving/gunicorn.conf.py). HOME=/tmp: a writable home when /tmp is
# the only writable path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000
# /healthz answers without touching the backend (liveness); Kubernetes uses its own probes (k8s/), Docker this.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["gunicorn", "-c", "serving/gunicorn.conf.py", "serving.app:create_app()"]
