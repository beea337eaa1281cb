"""Can the Hugging Face hub be used right now? One answer for models and data alike.

Before a hub download (``from_pretrained`` of a hub id, ``datasets.load_dataset``) we decide
within a few seconds whether it can work, instead of letting the Hugging Face libraries retry
for about a minute and then fail with a traceback:

1. an offline variable (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``)
   set to a true value (``1``/``ON``/``YES``/``TRUE``, any case, the huggingface_hub rule)
   means offline: :func:`offline_reason`;
2. otherwise one real HTTP request (``HEAD <endpoint>/api/whoami-v2``) must be answered with
   a status line within ONE total deadline covering DNS, connect, TLS and the status line:
   :func:`probe_hub`. Any status (200, 401, 404, a redirect...) means an HTTP server answers;
   a port that accepts TCP but never speaks HTTP fails here. The request runs in a daemon
   thread that we stop waiting for at the deadline, because ``getaddrinfo`` ignores socket
   timeouts. Proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``...) are honoured, as
   the hub client does.

After a successful probe :func:`bounded_hub_timeouts` keeps the download's own metadata
request short, so a hub that goes away in between still fails in seconds, not a minute.
Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from prefixtune.errors import one_line

#: Values that switch an offline variable on (huggingface_hub's ``_is_true``).
TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Environment override (seconds) of the probe's total deadline.
TIMEOUT_ENV = "PREFIXTUNE_HUB_PROBE_TIMEOUT"
DEFAULT_TIMEOUT_S = 2.5
#: Metadata (ETag) and download read timeouts (seconds) used for hub calls after a probe.
ETAG_TIMEOUT_S = 5
DOWNLOAD_TIMEOUT_S = 10


def offline_reason(extra_vars: Iterable[str] = ()) -> str | None:
    """``"VAR=value"`` for the first offline variable set to a true value, else ``None``."""
    for var in (*OFFLINE_VARS, *extra_vars):
        value = os.environ.get(var, "")
        if value.strip().upper() in TRUE_VALUES:
            return f"{var}={value}"
    return None


def hub_endpoint() -> str:
    """The hub's base URL: ``$HF_ENDPOINT``, else https://huggingface.co (no trailing /)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")


def probe_timeout() -> float:
    """The probe's total deadline: ``$PREFIXTUNE_HUB_PROBE_TIMEOUT`` seconds, else 2.5."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, "") or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an HTTP answer too: report it instead of following it (no 2nd host)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def probe_hub(timeout: float | None = None) -> str | None:
    """``None`` when the hub endpoint answers an HTTP request within ``timeout`` seconds
    (everything included); otherwise a one-line reason. ``timeout`` defaults to
    :func:`probe_timeout`."""
    deadline = probe_timeout() if timeout is None else float(timeout)
    endpoint = hub_endpoint()
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"HF_ENDPOINT={endpoint!r} is not an http(s) URL"
    url = f"{endpoint}/api/whoami-v2"
    result: list[str | None] = []

    def attempt() -> None:
        opener = urllib.request.build_opener(_NoRedirect)
        request = urllib.request.Request(
            url, method="HEAD", headers={"User-Agent": "prefixtune-hub-probe"}
        )
        try:
            # The socket timeout bounds connect and each read; the join below bounds the total.
            with opener.open(request, timeout=deadline):
                result.append(None)
        except urllib.error.HTTPError:  # any status line (401, 404, 3xx...) is an answer
            result.append(None)
        except Exception as exc:  # DNS, refused, TLS, timeout, not HTTP
            result.append(f"no HTTP answer from {endpoint}: {one_line(exc, 160)}")

    thread = threading.Thread(target=attempt, name="prefixtune-hub-probe", daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(deadline)
    if not result:
        waited = time.monotonic() - start
        return f"no HTTP answer from {endpoint} within {waited:.1f} s"
    return result[0]


@contextlib.contextmanager
def bounded_hub_timeouts() -> Iterator[None]:
    """For the duration of a hub call: short metadata/download timeouts, unless the user
    chose their own (``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT``).

    huggingface_hub reads those variables when it is imported, so besides the environment
    (for a first import) the values in ``huggingface_hub.constants`` are set while they still
    hold the library defaults, and restored afterwards.
    """
    wanted = {"HF_HUB_ETAG_TIMEOUT": ETAG_TIMEOUT_S, "HF_HUB_DOWNLOAD_TIMEOUT": DOWNLOAD_TIMEOUT_S}
    env_added = [var for var in wanted if var not in os.environ]
    for var in env_added:
        os.environ[var] = str(wanted[var])
    patched: list[tuple[object, str, object]] = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        defaults = {
            "HF_HUB_ETAG_TIMEOUT": getattr(constants, "DEFAULT_ETAG_TIMEOUT", None),
            "HF_HUB_DOWNLOAD_TIMEOUT": getattr(constants, "DEFAULT_DOWNLOAD_TIMEOUT", None),
        }
        for var, value in wanted.items():
            old = getattr(constants, var, None)
            if var in env_added and old is not None and old == defaults[var]:
                setattr(constants, var, value)
                patched.append((constants, var, old))
    try:
        yield
    finally:
        for module, var, old in patched:
            setattr(module, var, old)
        for var in env_added:
            if os.environ.get(var) == str(wanted[var]):
                del os.environ[var]
