"""AWS Lambda entry point: `lambda_handler.handler` (see textgen/transports/aws_lambda.py for the event kinds)."""

import os

# Lambda's filesystem is read-only except /tmp, and HOME may not exist: keep every cache under /tmp.
os.environ.setdefault("HF_HOME", "/tmp/huggingface")
os.environ.setdefault("CACHE_DIR", "/tmp/textgen")

from textgen.transports.aws_lambda import make_handler  # noqa: E402
from textgen.server import create_app  # noqa: E402

app = create_app()  # the model loads during the init phase, once per execution environment
handler = make_handler(app)
