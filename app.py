"""Entry point: `gunicorn app:app` (settings in gunicorn.conf.py) or `python app.py` for development."""

from textgen.server import create_app

app = create_app()  # loads the model once, at startup

if __name__ == "__main__":
    settings = app.extensions["textgen.settings"]
    app.run(host="0.0.0.0", port=settings.port, threaded=True, debug=False)  # never the debugger
