"""The seed's design, for comparison only: one `model.generate` per request, nothing shared.

    MODEL_ID=/path/to/model gunicorn --threads 16 bench.naive_app:app
"""

import os

import torch
from flask import Flask, jsonify, request
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_ID = os.environ.get("MODEL_ID", "distilbert/distilgpt2")
tokenizer = AutoTokenizer.from_pretrained(MODEL_ID)
model = AutoModelForCausalLM.from_pretrained(MODEL_ID)
model.eval()

app = Flask(__name__)


@app.get("/health")
def health():
    return jsonify({"status": "ok"})


@app.post("/generate")
def generate():
    body = request.get_json()
    inputs = tokenizer(body["prompt"], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=body.get("max_new_tokens", 50),
            do_sample=True,
            top_k=50,
            pad_token_id=tokenizer.eos_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return jsonify(
        {
            "generated_text": tokenizer.decode(new_tokens, skip_special_tokens=True),
            "generated_tokens": int(new_tokens.shape[0]),
        }
    )
