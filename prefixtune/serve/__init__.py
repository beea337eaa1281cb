"""``prefixtune-serve``: an OpenAI-compatible completions server for many prefixes on one frozen
model, rows with different prefixes decoding in one batch.

schemas.py: the request bodies and OpenAI-style errors; engine.py: the one scheduler thread that
feeds every request into the engine's decoding pools (prefix/decoding.py); app.py: the FastAPI
routes; cli.py: the command.
"""
