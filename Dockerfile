# vidtrain image.
#   CPU (default): docker build -t vidtrain .
#   GPU:           docker build --target gpu -t vidtrain:gpu .
# Both install the one pinned set in requirements.txt; hyperparameters come from the
# environment at run time (VIDTRAIN_*), never from the image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------
# The application's files, once for both runtime targets.
FROM scratch AS source
COPY entrypoint.py /app/
COPY loader/ /app/loader/
COPY models/ /app/models/
COPY vidtrain/ /app/vidtrain/

# ---------------------------------------------------------------------------------------
# decord with CUDA/NVDEC, built from a pinned revision (PyPI's decord2 wheels are CPU-only).
# Needs: the CUDA toolkit (this image), FFmpeg 4.x development headers (Ubuntu 22.04's),
# and the NVDEC library libnvcuvid, which ships with the NVIDIA driver: the build links
# against the stub from libnvidia-decode; at run time the host driver provides the real one
# (nvidia-container-toolkit with NVIDIA_DRIVER_CAPABILITIES including "video").
FROM ${CUDA_DEVEL_IMAGE} AS decord-gpu-build
ARG DECORD_REPO=https://github.com/dmlc/decord.git
ARG DECORD_REF=e676a688e6c7fd49797866102d3388fe72b5d4fd
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      git=1:2.34.1-1ubuntu1.* cmake=3.22.1-1ubuntu1.* build-essential=12.9ubuntu3 \
      libavcodec-dev=7:4.4.2-0ubuntu0.22.04.* libavformat-dev=7:4.4.2-0ubuntu0.22.04.* \
      libavfilter-dev=7:4.4.2-0ubuntu0.22.04.* libavdevice-dev=7:4.4.2-0ubuntu0.22.04.* \
      libavutil-dev=7:4.4.2-0ubuntu0.22.04.* libswscale-dev=7:4.4.2-0ubuntu0.22.04.* \
      libswresample-dev=7:4.4.2-0ubuntu0.22.04.* libnvidia-decode-550=550.* \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --recursive "${DECORD_REPO}" /src/decord \
 && git -C /src/decord checkout "${DECORD_REF}" \
 && git -C /src/decord submodule update --init --recursive
WORKDIR /src/decord/build
RUN cmake .. -DUSE_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
 && make -j"$(nproc)" \
 && cp libdecord.so /src/decord/python/decord/

# ---------------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS gpu
ARG UV_VERSION=0.13.8
ARG PYTHON_VERSION=3.11.14
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tini=0.19.0-1 python3-pip=22.0.2+dfsg-1ubuntu0.* \
      libavcodec58=7:4.4.2-0ubuntu0.22.04.* libavformat58=7:4.4.2-0ubuntu0.22.04.* \
      libavfilter7=7:4.4.2-0ubuntu0.22.04.* libavdevice58=7:4.4.2-0ubuntu0.22.04.* \
      libswscale5=7:4.4.2-0ubuntu0.22.04.* \
 && rm -rf /var/lib/apt/lists/*
# Python 3.11 (what requirements.txt is pinned for) from a standalone build, in a venv.
RUN pip3 install --no-cache-dir "uv==${UV_VERSION}" \
 && uv python install "${PYTHON_VERSION}" --install-dir /opt/python \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
COPY requirements.txt /tmp/requirements.txt
# The pinned set, with TensorFlow's CUDA libraries (same version) and decord from the
# CUDA build above in place of the CPU-only decord2 wheel.
RUN sed -e '/^decord2==/d' -e 's/^tensorflow==/tensorflow[and-cuda]==/' /tmp/requirements.txt \
      > /tmp/requirements-gpu.txt \
 && uv pip install --no-cache -r /tmp/requirements-gpu.txt \
 && uv pip uninstall libclang \
 && rm -r "$(python -c 'import importlib.util as u; print(u.find_spec("tensorflow").submodule_search_locations[0])')/include"
COPY --from=decord-gpu-build /src/decord/python /opt/decord
RUN uv pip install --no-cache --no-deps /opt/decord
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
WORKDIR /app
COPY --from=source /app/ ./
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin vidtrain \
 && mkdir -p /cache /output && chown 10001:10001 /cache /output
USER 10001
ENV VIDTRAIN_CACHE_DIR=/cache VIDTRAIN_OUTPUT_DIR=/output VIDTRAIN_DECODE_DEVICE=gpu \
    PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8000
ENTRYPOINT ["tini", "--", "python", "entrypoint.py"]

# ---------------------------------------------------------------------------------------
# CPU image: the default target, last so that a plain `docker build` builds it.
FROM ${PYTHON_IMAGE} AS cpu
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt ./
# Then drop what only building needs, not running (0.5 of 3.0 GB, measured: README, Docker): TensorFlow's
# C++ headers (430 MB, for compiling custom ops) and libclang (62 MB, a TensorFlow build-tool dependency).
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
 && pip uninstall -y --disable-pip-version-check libclang \
 && rm -r "$(python -c 'import importlib.util as u; print(u.find_spec("tensorflow").submodule_search_locations[0])')/include"
COPY --from=source /app/ ./
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin vidtrain \
 && mkdir -p /cache /output && chown 10001:10001 /cache /output
USER 10001
# oneDNN kernels: TensorFlow turns them on only on CPUs with AVX-512 VNNI/BF16 or AMX; conv3d is 4.5x
# faster with them on a 2-core AMD EPYC without AVX-512 (BENCHMARKS.md). The entrypoint sets the same default.
ENV VIDTRAIN_CACHE_DIR=/cache VIDTRAIN_OUTPUT_DIR=/output PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib \
    TF_ENABLE_ONEDNN_OPTS=1
EXPOSE 8000
# tini is PID 1: it forwards SIGTERM to the job (which checkpoints and exits 143) and reaps.
ENTRYPOINT ["tini", "--", "python", "entrypoint.py"]
