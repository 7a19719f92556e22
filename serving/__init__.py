"""The charlm gateway: a Flask app (run under gunicorn) that streams text from an exported SavedModel,
in-process or through TensorFlow Serving. Start with `serving.app.create_app`; docs/serving.md explains it."""
