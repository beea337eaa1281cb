"""The Hugging Face hub probe (prefixtune.hubprobe) and the loaders that rely on it.

Every endpoint here lives on 127.0.0.1 inside the test: a refusing port, a listener that
accepts TCP and never speaks HTTP, and a tiny HTTP server.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
import types

import pytest

from prefixtune import hubprobe
from prefixtune import models as models_mod
from prefixtune.config import Arch
from prefixtune.data import DataError, load_split
from prefixtune.errors import UsageError

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
DEADLINE = 1.0


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """No offline variable, no proxy, a short probe deadline and an empty HF home."""
    for var in (*hubprobe.OFFLINE_VARS, *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(hubprobe.TIMEOUT_ENV, str(DEADLINE))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return monkeypatch


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_endpoint():
    """http://127.0.0.1:<port> where connections are accepted but nothing is ever written."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # timeout: look at stop again
                continue
            held.append(conn)  # keep it open, say nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def http_endpoint():
    """http://127.0.0.1:<port> answering every request with 401 (as the hub's whoami does)."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            requests.append(f"{self.command} {self.path}")
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET = _answer

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()
    thread.join(2)


def test_refused_port_gives_a_reason_quickly(hub_env):
    endpoint = f"http://127.0.0.1:{_free_port()}"
    hub_env.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    reason = hubprobe.probe_hub(timeout=DEADLINE)
    assert time.monotonic() - start < 10 * DEADLINE
    assert reason is not None and endpoint in reason and "\n" not in reason


def test_silent_listener_fails_within_the_deadline(hub_env, silent_endpoint):
    hub_env.setenv("HF_ENDPOINT", silent_endpoint)
    start = time.monotonic()
    reason = hubprobe.probe_hub(timeout=DEADLINE)
    assert time.monotonic() - start < 10 * DEADLINE
    assert reason is not None and silent_endpoint in reason and "\n" not in reason


def test_silent_listener_data_fallback_is_one_dataerror(hub_env, silent_endpoint, tmp_path):
    hub_env.setenv("HF_ENDPOINT", silent_endpoint)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_split("xsum", "dev", tmp_path)
    assert time.monotonic() - start < 10 * DEADLINE
    msg = str(info.value)
    assert "data.root=" in msg and "Hugging Face hub" in msg and "\n" not in msg
    assert silent_endpoint in msg


def test_silent_listener_hub_model_is_one_usageerror(hub_env, silent_endpoint):
    hub_env.setenv("HF_ENDPOINT", silent_endpoint)
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        models_mod._from_hub("some/id", "name", Arch.decoder)
    assert time.monotonic() - start < 10 * DEADLINE + 5  # + the local-cache lookup
    msg = str(info.value)
    assert "\n" not in msg and "some/id" in msg and "hub is unreachable" in msg
    assert silent_endpoint in msg


def test_an_http_answer_of_any_status_is_reachable(hub_env, http_endpoint):
    endpoint, requests = http_endpoint
    hub_env.setenv("HF_ENDPOINT", endpoint + "/")  # a trailing slash is fine
    assert hubprobe.probe_hub(timeout=DEADLINE) is None
    assert requests == ["HEAD /api/whoami-v2"]


def test_a_redirect_is_an_answer_and_is_not_followed(hub_env):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{_free_port()}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        hub_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hubprobe.probe_hub(timeout=DEADLINE) is None
    finally:
        server.shutdown()
        server.server_close()


def test_not_an_http_url_is_a_reason(hub_env):
    hub_env.setenv("HF_ENDPOINT", "ftp://127.0.0.1/")
    reason = hubprobe.probe_hub(timeout=DEADLINE)
    assert reason is not None and "HF_ENDPOINT" in reason


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(hubprobe, "probe_hub", refuse)
    monkeypatch.setattr(models_mod, "probe_hub", refuse)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "ON", "yes", "True"])
def test_offline_variables_name_the_variable(hub_env, var, value):
    hub_env.setenv(var, value)
    assert hubprobe.offline_reason() == f"{var}={value}"


@pytest.mark.parametrize("value", ["", "0", "false", "off", "no"])
def test_offline_variables_off(hub_env, value):
    for var in hubprobe.OFFLINE_VARS:
        hub_env.setenv(var, value)
    assert hubprobe.offline_reason() is None
    hub_env.setenv("MY_OFFLINE", "1")
    assert hubprobe.offline_reason(extra_vars=("MY_OFFLINE",)) == "MY_OFFLINE=1"


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_loaders_fail_without_the_network(hub_env, tmp_path, var):
    hub_env.setenv(var, "1")
    _no_network(hub_env)
    with pytest.raises(DataError) as info:
        load_split("xsum", "dev", tmp_path)
    assert var in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError) as err:
        models_mod._from_hub("some/id", "name", Arch.decoder)
    assert var in str(err.value) and "\n" not in str(err.value)


def test_endpoint_default_and_override(hub_env):
    hub_env.delenv("HF_ENDPOINT", raising=False)
    assert hubprobe.hub_endpoint() == "https://huggingface.co"
    hub_env.setenv("HF_ENDPOINT", "http://127.0.0.1:8080/")
    assert hubprobe.hub_endpoint() == "http://127.0.0.1:8080"


def test_probe_timeout_env(hub_env):
    hub_env.setenv(hubprobe.TIMEOUT_ENV, "0.5")
    assert hubprobe.probe_timeout() == 0.5
    hub_env.setenv(hubprobe.TIMEOUT_ENV, "soon")
    assert hubprobe.probe_timeout() == hubprobe.DEFAULT_TIMEOUT_S


def test_download_failure_after_the_probe_is_one_usageerror(hub_env, http_endpoint):
    """The probe answers but the download breaks: one line naming the model and endpoint."""
    endpoint, _ = http_endpoint
    hub_env.setenv("HF_ENDPOINT", endpoint)
    hub_env.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    constants = pytest.importorskip("huggingface_hub.constants")
    library_default = constants.HF_HUB_ETAG_TIMEOUT == constants.DEFAULT_ETAG_TIMEOUT
    seen = {}

    def broken(hub_id, **kwargs):
        if not kwargs.get("local_files_only"):
            seen["etag"] = constants.HF_HUB_ETAG_TIMEOUT
        raise OSError(f"We couldn't connect to the hub\nto load {hub_id}")

    fake = types.SimpleNamespace(from_pretrained=broken)
    hub_env.setattr(models_mod, "AutoTokenizer", fake)
    hub_env.setattr(models_mod, "AutoModelForCausalLM", fake)
    with pytest.raises(UsageError) as info:
        models_mod._from_hub("some/id", "name", Arch.decoder)
    msg = str(info.value)
    assert "\n" not in msg and "some/id" in msg and endpoint in msg and "model=name" in msg
    if library_default:  # the download ran with the bounded metadata timeout, then restored
        assert seen["etag"] == hubprobe.ETAG_TIMEOUT_S
    assert constants.HF_HUB_ETAG_TIMEOUT != hubprobe.ETAG_TIMEOUT_S or not library_default


def test_bounded_hub_timeouts_restores_everything(hub_env):
    constants = pytest.importorskip("huggingface_hub.constants")
    hub_env.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    hub_env.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)
    before = constants.HF_HUB_ETAG_TIMEOUT
    with hubprobe.bounded_hub_timeouts():
        assert os.environ["HF_HUB_ETAG_TIMEOUT"] == str(hubprobe.ETAG_TIMEOUT_S)
        if before == constants.DEFAULT_ETAG_TIMEOUT:
            assert constants.HF_HUB_ETAG_TIMEOUT == hubprobe.ETAG_TIMEOUT_S
    assert "HF_HUB_ETAG_TIMEOUT" not in os.environ
    assert constants.HF_HUB_ETAG_TIMEOUT == before
