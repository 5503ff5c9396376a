# syntax=docker/dockerfile:1
# movierec: the API, the training worker and the one-shot commands share this image.
#
# CPU (default):  docker build -t movierec .
# NVIDIA GPU:     docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                   -t movierec:gpu .
# The CUDA wheels of PyTorch carry their own CUDA libraries, so the slim Python base serves both;
# only the host's driver (NVIDIA Container Toolkit) is needed at run time. PYTHON_IMAGE may name
# another Debian-based Python 3.11 image (both stages must use the same one: the virtual
# environment is copied across).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: install the project and its dependencies into /opt/venv -------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
COPY requirements ./requirements

# PyTorch first, pinned by version (requirements/torch.txt), from the chosen index, in its own
# layer: it is the largest and changes least. Its CPU and CUDA builds are different files of one
# version, so it is the one package pinned by version rather than by hash.
RUN pip install -r requirements/torch.txt --index-url "${TORCH_INDEX}"

# Every other dependency from the lock, each file checked against its sha256; nothing resolved.
RUN pip install --require-hashes --no-deps -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY app ./app
COPY ml ./ml
COPY migrations ./migrations
# The project itself (its build backend is in the lock), a consistency check of what is installed,
# and a smoke test of the package (from /, so that /src is not what gets imported).
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && cd / && python -c "import app.cli, app.main as m, migrations; assert (m.STATIC_DIR / 'index.html').is_file()"

# --- runtime: the virtual environment, a non-root user, nothing else --------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="movierec" \
      org.opencontainers.image.description="Movie recommendations from a stacked autoencoder"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MOVIEREC_MODEL_DIR=/var/lib/movierec/models \
    MOVIEREC_DATA_DIR=/var/lib/movierec/data

# The state folders exist in the image owned by the service user, so that named volumes mounted
# there start with the right owner.
RUN groupadd --system --gid 10001 movierec \
    && useradd --system --uid 10001 --gid movierec --create-home --home-dir /home/movierec \
       --shell /usr/sbin/nologin movierec \
    && mkdir -p /var/lib/movierec/models /var/lib/movierec/data \
    && chown -R movierec:movierec /var/lib/movierec

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/bootstrap.sh /usr/local/bin/movierec-bootstrap

WORKDIR /home/movierec
USER movierec:movierec

EXPOSE 8000

# Liveness of the HTTP process; Python's urllib, so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

CMD ["movierec", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
