# steelseg inference service: CPU only, ONNX Runtime or PyTorch bundles, non-root, health-checked.
#   docker build -t steelseg .
#   docker run -p 8000:8000 -v $PWD/bundles/seg-int8:/bundle:ro -e STEELSEG_API_KEY=secret steelseg
# The bundle is mounted read-only at /bundle; add -v $PWD/feedback:/feedback and
# --feedback /feedback (after the image name) to collect reviewed images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# CPU-only PyTorch wheels keep the image small; the package's own dependencies come from PyPI.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.2,<3" "torchvision>=0.17" \
 && pip install ".[serve,export]" \
 && useradd --create-home --uid 10001 steelseg

USER steelseg
EXPOSE 8000
VOLUME ["/bundle"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
ENTRYPOINT ["steelseg", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
CMD []
