# syntax=docker/dockerfile:1
# The service image (default target) and the AWS Lambda image (`--target lambda`), CPU-only, no torch:
# the model is served by ONNX Runtime from a graph built here, at image build time, from the checkpoint.
#   docker build -t gpt2-text-generator .
#   docker build --build-arg MODEL_ID=models/my-model -t gpt2-text-generator .   (a path in the context)
#   docker build --target lambda --platform linux/amd64 --provenance=false -t gpt2-text-generator-lambda .
ARG PYTHON_IMAGE=python:3.11-slim

# --- what the serving process imports, in a virtual environment copied whole into the final images --
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-serve.txt requirements-lambda.txt /tmp/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-serve.txt

FROM deps AS deps-lambda
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-lambda.txt \
    && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools

# pip and setuptools installed the rest; nothing runs them in the final images (-25 MB)
FROM deps AS deps-final
RUN /opt/venv/bin/python -m pip uninstall -y -q pip setuptools

# --- the model, baked in as an ONNX graph: a hub id is downloaded here, a path in the context copied;
#     the graph (8-bit weights by default) is built with numpy + onnx, without torch, and only the
#     graph, the config and the tokenizer go into the final images (not the float32 checkpoint) ------
FROM deps AS model
ARG MODEL_ID=distilbert/distilgpt2
ARG QUANTIZE=int8
COPY requirements-serve.txt requirements.txt /tmp/
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
WORKDIR /context
COPY . .
RUN /opt/venv/bin/python scripts/fetch_model.py "${MODEL_ID}" /opt/checkpoint \
    && /opt/venv/bin/python scripts/build_graph.py /opt/checkpoint /opt/model --quantize "${QUANTIZE}" \
    && chmod -R a+rX /opt/model

# --- common runtime settings ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG QUANTIZE=int8
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODEL_ID=/opt/model \
    QUANTIZE=${QUANTIZE} \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    CACHE_DIR=/tmp/textgen \
    PORT=5000
# Bytecode compiled here, once (the standard library now, the service's code below): the python base
# image ships its standard library without .pyc files, and with PYTHONDONTWRITEBYTECODE (and a
# read-only user) every start compiled each module it imported again: 0.4 of the 1.1 CPU-seconds to
# healthy, 4 s of wall clock at Render's tenth of a CPU (docs/performance.md, "Cold start"). The venv's
# packages were compiled by pip.
RUN python -m compileall -q -j 0 -x '/(test|idlelib|tkinter|turtledemo|lib2to3)/' \
        "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
WORKDIR /app
COPY --from=model /opt/model /opt/model
COPY app.py gunicorn.conf.py lambda_handler.py ./
COPY textgen ./textgen
RUN python -m compileall -q /app

# --- AWS Lambda: the Runtime Interface Client calls lambda_handler.handler --------------------------
FROM runtime AS lambda
COPY --from=deps-lambda /opt/venv /opt/venv
ENTRYPOINT ["python", "-m", "awslambdaric"]
CMD ["lambda_handler.handler"]

# --- the HTTP service (default target): gunicorn with gunicorn.conf.py, honouring $PORT -------------
FROM runtime AS service
COPY --from=deps-final /opt/venv /opt/venv
# Nothing writable for the service's user but /tmp: the base image leaves /var/tmp and /run/lock open too.
RUN chmod o-w /var/tmp /run/lock
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '5000'), timeout=4)"]
CMD ["gunicorn", "app:app"]
