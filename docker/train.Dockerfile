# syntax=docker/dockerfile:1
# Training and export (training/): `python -m training.train` is the entry point, so
#   docker run IMAGE --corpus /data/corpus.txt --run-dir /data/runs/charlm
# trains; the Kubernetes Jobs (k8s/training/) run train-and-export.sh instead, which calls it and then
# `python -m training.export`. Built from the repository root by `make images`:
#   docker build -f docker/train.Dockerfile -t registry.example.com/charlm/train:0.1.0 .

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
COPY training/ training/
COPY model_interface/ model_interface/
RUN /opt/venv/bin/python -m compileall -q training
# PYTHONPATH: `python -m training.train` works from any working directory (the Jobs run in the runs volume,
# where relative paths such as data/ and runs/ land).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# A batch process: nothing to poll. Training reports through its logs, history.csv and TensorBoard.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "training.train"]
