"""Flask transports: thin routes over validate -> engine.submit -> shape the response.

Routes, one blueprint a file: generate.py (TGI's /generate, /generate_stream and POST /), openai.py
(/v1), ollama.py (Ollama's /api: version, tags, ps, show, generate, chat), anthropic.py (Anthropic's
/v1/messages, /v1/messages/count_tokens), embeddings.py (/v1/embeddings, /api/embed, /api/embeddings),
tokenize.py (/tokenize, /detokenize), health.py (/health, /ready, /info), metrics.py (/metrics), docs.py
over openapi.py, openapi_ollama.py, openapi_anthropic.py and openapi_embeddings.py (/openapi.json, /docs),
playground.py (GET /); static/ holds the two pages.
Around them: access.py (API keys, CORS), body.py (the JSON body, bounded), error_responses.py (the one
error shape, in OpenAI's, Ollama's and Anthropic's forms too), disconnect.py (clients that hang up),
gunicorn_worker.py (the read deadline, the drain).
"""
