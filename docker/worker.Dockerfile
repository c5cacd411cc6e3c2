# The worker image: the shared core (labcore/) and the trainer (worker/) with PyTorch; no routes and no
# dashboard. PyPI's Linux torch wheels bundle CUDA; the
# host needs the NVIDIA driver and the NVIDIA container toolkit, nothing else.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 gatlab && mkdir -p /lab/runs /lab/data && chown -R gatlab /lab
WORKDIR /app
# bubblewrap: the sandbox models from elsewhere are evaluated in (worker/gat/sandbox.py).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
COPY requirements-lock.txt ./
# torch first, in a layer of its own: code changes then rebuild only the small layers below.
RUN pip install -c requirements-lock.txt torch torchvision
COPY pyproject.toml README.md ./
COPY labcore labcore
COPY worker worker
COPY examples examples
RUN pip install -c requirements-lock.txt -e '.[worker]'
COPY docker/entrypoint.sh /usr/local/bin/gatlab-entrypoint
# Starts as root to hand a root-owned mount (./data made by Docker) to gatlab, then runs as gatlab.
ENTRYPOINT ["gatlab-entrypoint"]
CMD ["gatlab", "worker"]
