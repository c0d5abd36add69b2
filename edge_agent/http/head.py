"""What the HTTP front tells from a request's head alone, before the application: the API keys it
carries and the console's body cap; and the environ key by which it tells the app that the body was
read whole. Kept apart from the Flask modules, which import numpy and Flask: gunicorn's master imports
the worker class (``http/front.py``) and with it this module, and stays at about 37 MB instead of about
65 MB."""

from __future__ import annotations

MAX_CONFIG_BYTES = 256 * 1024  # a configuration pasted into the console to be checked (console.py)
# In the WSGI environ of a request whose body the front read whole, within the route's cap, before the
# application: ``wsgi.input`` is that body, ``CONTENT_LENGTH`` its size (http/app.py reads it directly).
BODY_READ_WHOLE = "edge_agent.body_read_whole"


def keys_in(query_key: str | None, authorization: str) -> list[str]:
    """The keys of the query and the ``Authorization: Bearer`` header, in docs/http-api.md §1.3 precedence
    (the SDK's literal ``api_key=None`` is no key). The front reads them before Flask does."""
    keys = []
    if query_key and query_key != "None":
        keys.append(query_key)
    if authorization.lower().startswith("bearer "):
        keys.append(authorization[7:].strip())
    return keys
