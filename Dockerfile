# ctr-serve, the scoring service: docker build -t ctr-scoring . && docker run -p 8080:8080 ctr-scoring
# Mount a model repository at /models (or let it write the demo model there on first start).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CTR_MODEL_REPO=/models \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    CTR_KERNEL_CACHE=/opt/ctr/kernels

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY model_sync ./model_sync
# compiled kernels for the portable x86-64 levels (x86-64-v3, -v4, -v4-bf16): a new container
# picks the one its CPU runs and is ready in seconds instead of compiling for ~45 s
RUN pip install --no-cache-dir . \
    && ctr-kernels build /opt/ctr/kernels \
    && useradd --create-home --uid 10001 --user-group ctr \
    && mkdir -p /models \
    && chown ctr:ctr /models

USER 10001:10001
EXPOSE 8080
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["ctr-serve", "--host", "0.0.0.0", "--port", "8080"]
