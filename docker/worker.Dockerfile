# The worker image: the API image's code plus PyTorch. PyPI's Linux torch wheels bundle CUDA; the
# host needs the NVIDIA driver and the NVIDIA container toolkit, nothing else.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 gatlab && mkdir -p /lab/runs /lab/data && chown -R gatlab /lab
WORKDIR /app
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY backend backend
COPY worker worker
COPY frontend frontend
COPY examples examples
RUN pip install -e '.[worker]'
USER gatlab
CMD ["gatlab", "worker"]
