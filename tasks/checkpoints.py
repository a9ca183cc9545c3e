"""Pretrained checkpoints for the language-model tasks: ``task.pretrained`` and ``task.revision``
checked before any work, and whether the Hugging Face Hub can be reached at all.

``task.pretrained`` is a Hugging Face repository name (``EleutherAI/pythia-70m``), downloaded on
first use into the Hugging Face cache (``HF_HOME``, by default ``~/.cache/huggingface``), or a
folder written by ``save_pretrained`` (nothing is downloaded). ``task.revision`` is a branch, tag
or commit of that repository (the Pythia suite's training steps are branches: ``step143000``).
A name that is neither cached nor reachable (no network, or ``HF_HUB_OFFLINE=1``) is refused in
one line within seconds, instead of the Hub client's retries; a cached checkpoint is read without
a network.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

#: a Hugging Face repository name: ``name`` or ``owner/name``
REPO_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
#: seconds the reachability probe waits for the Hub (name lookup and connection)
PROBE_S = 5.0
_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from this machine (offline mode set, or no
    connection to its host, or to the HTTPS proxy, within :data:`PROBE_S` seconds), or None."""
    for var in _OFFLINE:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []
    probe = threading.Thread(target=lambda: result.append(_probe(host, port)), daemon=True)
    probe.start()
    probe.join(PROBE_S + 1)  # a name lookup is not bounded by the socket's timeout
    reason = result[0] if result else f"no answer within {PROBE_S:.0f} s"
    return f"{host} cannot be reached ({reason})" if reason else None


def is_cached(repo: str, revision: str | None) -> bool:
    """Whether the Hugging Face cache holds ``repo`` at ``revision`` (its config file)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)
    except Exception:  # an unusual cache layout or name: treated as absent
        return False


def is_folder(pretrained: str) -> bool:
    return pretrained.startswith((".", "/", "~")) or Path(pretrained).expanduser().exists()


def pretrained_problems(pretrained, revision) -> list[str]:
    """One line per problem of ``task.pretrained`` / ``task.revision``, found without a download."""
    usage = ("give a Hugging Face repository name (EleutherAI/pythia-70m), a folder written by "
             "save_pretrained, or null (a seeded random initialization of task.size)")
    if pretrained is None:
        return [] if revision is None else [f"task.revision={revision!r} needs task.pretrained; {usage}"]
    if not isinstance(pretrained, str) or not pretrained.strip():
        return [f"task.pretrained={pretrained!r}: {usage}"]
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        return [f"task.revision={revision!r}: give a branch, tag or commit of the repository "
                "(e.g. step143000 for a Pythia training step) or null (its main branch)"]
    if is_folder(pretrained):
        if not (Path(pretrained).expanduser() / "config.json").is_file():
            return [f"task.pretrained={pretrained!r} is not a folder written by save_pretrained "
                    "(no config.json); give such a folder, a Hugging Face repository name, or null"]
        return []
    if not REPO_NAME.fullmatch(pretrained):
        return [f"task.pretrained={pretrained!r} is neither an existing folder nor a repository name; {usage}"]
    if is_cached(pretrained, revision):
        return []
    reason = hub_unreachable()
    if reason:
        at = f" at {revision}" if revision else ""
        return [f"task.pretrained={pretrained!r}{at} is not in the Hugging Face cache and {reason}; download "
                f"it where there is a network (huggingface-cli download {pretrained}, or save_pretrained to a "
                "folder), then copy the cache (HF_HOME) here or give task.pretrained=<that folder>"]
    return []


def local_files_only(pretrained: str) -> bool:
    """Whether loading ``pretrained`` must not ask the Hub (a folder, or the Hub unreachable: the
    Hugging Face cache is read without the client's retries)."""
    return is_folder(pretrained) or hub_unreachable() is not None
