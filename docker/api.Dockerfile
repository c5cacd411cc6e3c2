# The API image: labcore/ (the shared core: store, migrations, the user commands) and backend/ (the
# HTTP layer) with the dashboard. No torch, no worker/ (slim).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 gatlab && mkdir -p /lab/runs /lab/data && chown -R gatlab /lab
WORKDIR /app
COPY pyproject.toml README.md requirements-lock.txt ./
COPY labcore labcore
COPY backend backend
COPY frontend frontend
COPY examples examples
# Editable: the API serves frontend/ and examples/ from beside its package. The lock pins every version.
RUN pip install -c requirements-lock.txt -e .
COPY docker/entrypoint.sh /usr/local/bin/gatlab-entrypoint
# Starts as root to hand a root-owned mount (./data made by Docker) to gatlab, then runs as gatlab.
ENTRYPOINT ["gatlab-entrypoint"]
EXPOSE 8000
CMD ["uvicorn", "backend.main:app", "--host", "0.0.0.0", "--port", "8000"]
