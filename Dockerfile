# steelseg on the line: predict, serve, watch. Non-root, no build tools, versions pinned (deploy/image/constraints.txt).
#   make image                  # the base made here with debootstrap, then this file's `onnx` target (podman)
#   podman run -p 8000:8000 -v $PWD/bundles/seg-int8:/bundle:ro -e STEELSEG_API_KEY=secret steelseg:onnx \
#       serve /bundle --host 0.0.0.0
#   podman run -v $PWD/bundles/seg-int8:/bundle:ro -v $PWD/images:/images:ro -v $PWD/out:/out steelseg:onnx \
#       predict /bundle /images --out /out
# Targets: onnx (default: ONNX Runtime / OpenVINO bundles, no PyTorch: `steelseg export` them first), torch (PyTorch
# bundles too). BASE is a local Debian bookworm image with python3 (deploy/image/make-image.sh makes it; never pulled).
ARG BASE=localhost/steelseg-base:bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY deploy/image /src/deploy/image
RUN python3 -m venv /opt/steelseg \
 && /opt/steelseg/bin/pip install -q -r /src/deploy/image/requirements-onnx.txt -c /src/deploy/image/constraints.txt \
 && /opt/steelseg/bin/pip install -q --no-deps /src

FROM build AS build-torch
RUN /opt/steelseg/bin/pip install -q -r /src/deploy/image/requirements-torch.txt -c /src/deploy/image/constraints.txt

# no pip, no setuptools in what ships
FROM build AS venv-onnx
RUN /opt/steelseg/bin/python -m pip uninstall -y -q setuptools pip
FROM build-torch AS venv-torch
RUN /opt/steelseg/bin/python -m pip uninstall -y -q setuptools pip

FROM ${BASE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/steelseg/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN useradd --create-home --uid 10001 steelseg
USER steelseg
WORKDIR /home/steelseg
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
ENTRYPOINT ["steelseg"]
CMD ["--help"]

FROM runtime AS torch
COPY --from=venv-torch /opt/steelseg /opt/steelseg

FROM runtime AS onnx
COPY --from=venv-onnx /opt/steelseg /opt/steelseg
