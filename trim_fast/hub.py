"""The network policy, one place for models (:mod:`trim_fast.models.loading`) and datasets
(:mod:`trim_fast.data.readers`): which names may reach the hub, and how a hub access is bounded.

- **Path or hub id.** :func:`is_hub_id` is the one rule. A name that looks like a path
  (:func:`looks_like_path`) and does not exist is "no such file or directory" at once, never a
  hub lookup, so a typo never sends a local name to the hub nor waits on its retries. A hub id is
  ``name`` or ``org/name`` in the hub's spelling.
- **Bounded access.** :func:`bounded_hub_access` says what is fetched from where before the first
  request, limits every request's time, and gives up once the hub has not answered for
  ``HUB_NO_ANSWER_S``.

It wraps huggingface_hub's HTTP client factory (``set_client_factory``; reading the current one
is the single private access, in :func:`_current_client_factory`) and sets the timeouts in
``huggingface_hub.constants`` that the user left unset; both are restored afterwards.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time

from trim_fast._notice import must_see
from trim_fast.errors import HubUnavailableError

log = logging.getLogger("trim_fast.hub")

HUB_TIMEOUT_S = 10.0    # per request (connect, read, write, pool) where huggingface_hub sets none
HUB_NO_ANSWER_S = 30.0  # no new request once the hub has not answered anything for this long
HUB_MAX_UNANSWERED = 4  # ... or once this many requests got no answer (DNS failing: each fails at once)

# The hub's repository id grammar: ``name`` or ``org/name``.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
# A missing name with one of these endings is a missing file, not a hub id.
FILE_EXTENSIONS = (".jsonl", ".json", ".parquet", ".gz", ".zst", ".csv", ".tsv", ".txt", ".arrow",
                   ".ndjson", ".pq", ".bz2", ".xz", ".zip", ".tar", ".gguf", ".safetensors")


def looks_like_path(name: str) -> bool:
    """A name meant as a local path: ``./x``, ``../x``, ``.x``, ``/x``, ``~/x``, ``x/`` (and
    ``\\`` spellings), a file extension (``x.jsonl``), more than one ``/``, or a first component
    that is a local directory (``models/tiny2`` where ``models/`` exists here)."""
    seps = tuple({"/", "\\", os.sep})
    if name.startswith((".", "~")) or name.endswith(seps) or os.path.isabs(name):
        return True
    if name.lower().endswith(FILE_EXTENSIONS):
        return True
    parts = re.split(r"[\\/]", name)
    return len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))


def is_hub_id(name: str) -> bool:
    """Whether a name that is no existing local path may be looked up on the hub."""
    return bool(name) and not looks_like_path(name) and HUB_ID.fullmatch(name) is not None


class _HubWatch:
    """httpx request/response hooks: cap every request's timeouts at ``limit`` (huggingface_hub
    2.x sends some requests with none, and retries a missing file's metadata with 60 s), count
    requests and answers, and refuse new requests once nothing has answered for ``give_up``
    seconds (huggingface_hub retries each file 5 times with backoff, and transformers asks for
    several files, so bounded requests alone still add up to minutes)."""

    def __init__(self, limit: float, give_up: float):
        self.limit, self.give_up = limit, give_up
        self.start = time.monotonic()
        self.sent = 0
        self.answered = False
        self.lock = threading.Lock()

    def on_request(self, request) -> None:
        with self.lock:
            waited = time.monotonic() - self.start
            if self.sent and not self.answered and (waited > self.give_up
                                                    or self.sent >= HUB_MAX_UNANSWERED):
                raise _HubNoAnswer(f"no answer from the hub for {waited:.0f}s "
                                   f"({self.sent} request(s))")
            self.sent += 1
        timeout = dict(request.extensions.get("timeout") or {})
        request.extensions["timeout"] = {k: min(self.limit, timeout.get(k) or self.limit)
                                         for k in ("connect", "read", "write", "pool")}

    def on_response(self, response) -> None:
        self.answered = True


class _HubNoAnswer(ConnectionError):
    pass


def _current_client_factory():
    """The HTTP client factory huggingface_hub uses now (the user's, where one was set), so the
    hooks wrap it rather than replace it. huggingface_hub has ``set_client_factory`` but no public
    getter: this one private read is the only one. Hooking ``get_session()``'s client instead is
    not enough, since huggingface_hub closes that client after a connection error and the next
    one comes from the factory."""
    from huggingface_hub.utils import _http

    return getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)


@contextlib.contextmanager
def bounded_hub_access(what: str, repo: str, *, announce: bool = True,
                       logger: logging.Logger | None = None):
    """The network policy for any hub access: a WARNING on ``logger`` first (``announce=False``:
    the caller has said so), a time limit on every request, and no new request once the hub has
    not answered for ``HUB_NO_ANSWER_S``; a silent hub ends in a ``ConnectionError`` naming the
    endpoint."""
    from huggingface_hub import constants, set_client_factory

    if constants.is_offline_mode():
        (logger or log).info("HF_HUB_OFFLINE is set: %s %r comes from the local hub cache", what,
                             repo)
        yield
        return
    if announce:
        must_see(logger or log, "using the network: fetching %s %r from %s (a hub id; pass a local "
                 "directory to stay offline)", what, repo, constants.ENDPOINT)
    limit = float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or HUB_TIMEOUT_S)
    watch = _HubWatch(limit, HUB_NO_ANSWER_S)
    previous = _current_client_factory()

    def factory():
        client = previous()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), watch.on_request],
                              "response": [*hooks.get("response", []), watch.on_response]}
        return client

    constants_before = {}
    for key in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        if not os.environ.get(key):  # the user's own setting wins
            constants_before[key] = getattr(constants, key)
            setattr(constants, key, HUB_TIMEOUT_S)
    set_client_factory(factory)  # closes the shared client: the next request makes a hooked one
    try:
        yield
    except Exception as err:
        if watch.sent and not watch.answered:
            raise HubUnavailableError(
                f"{what} {repo!r}: the hub at {constants.ENDPOINT} did not answer in "
                f"{time.monotonic() - watch.start:.0f}s ({watch.sent} request(s) sent, each limited "
                f"to {limit:.0f}s, none answered). Check the network, HF_ENDPOINT or the proxy, set "
                "HF_HUB_OFFLINE=1 to use the local hub cache, or pass a local directory.") from err
        raise
    finally:
        set_client_factory(previous)
        for key, value in constants_before.items():
            setattr(constants, key, value)


__all__ = ["HUB_ID", "HUB_NO_ANSWER_S", "HUB_TIMEOUT_S", "bounded_hub_access", "is_hub_id",
           "looks_like_path"]
