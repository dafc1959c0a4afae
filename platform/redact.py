"""One rule for what looks like a credential, used wherever config or job metadata leaves
the process: saved config.yaml files, the job's worldclip-job.yaml, runtime_env env_vars.

A name is secret when one of its words (split at `_ - .` and case changes) is token, secret,
password/passwd/pwd, credential(s) or key, or ends in one of them ("HFTOKEN", "apikey");
"tokenizer" is a different word and stays visible. A value is secret when it is a URL with
user:password in it, or starts like a well-known token (hf_..., AKIA..., ghp_...). See
docs/operations.md, "Config validation and secrets".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_WORDS = ("token", "secret", "password", "passwd", "pwd", "credential", "credentials",
                 "key")
_WORD_SPLIT = re.compile(r"[_\-.\s/]+|(?<=[a-z0-9])(?=[A-Z])")
# Prefixes of tokens issued by common services (Hugging Face, AWS, GitHub, OpenAI, Slack).
_TOKEN_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|"
                          r"gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,}|xox[abp]-\S+)$")
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/@\s]*:[^/@\s]*@")


def is_secret_name(name: str) -> bool:
    """Whether a config key or env var name looks like it holds a credential."""
    words = [w.lower() for w in _WORD_SPLIT.split(str(name)) if w]
    return any(w == s or w.endswith(s) for w in words for s in _SECRET_WORDS)


def has_userinfo(value: str) -> bool:
    """A URL with user:password before the host (https://user:pass@host)."""
    return bool(_USERINFO.match(value))


def is_secret_value(value: Any) -> bool:
    return isinstance(value, str) and (has_userinfo(value) or bool(_TOKEN_VALUE.match(value)))


def strip_userinfo(url: str) -> str:
    """The URL with its user:password replaced by ***, kept otherwise (host, path, query)."""
    if not has_userinfo(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query,
                       parts.fragment))


def remove_userinfo(url: str) -> str:
    """The URL without its user:password, fit to forward (the host's own auth applies)."""
    if not has_userinfo(url):
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query,
                       parts.fragment))


def redact_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if has_userinfo(value):
        return strip_userinfo(value)
    return MASK if _TOKEN_VALUE.match(value) else value


def redact(obj: Any) -> Any:
    """A copy of a plain container (dicts, lists, scalars) with secret-named keys' values and
    secret-looking values masked, at any depth. Empty values stay empty (nothing to hide, and
    an empty storage.secret_key still means "from the environment")."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if is_secret_name(str(k)) and v not in (None, "") and not isinstance(v, Mapping):
                out[k] = MASK
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return redact_value(obj)


def safe_env(env: Mapping[str, str]) -> dict[str, str]:
    """Env vars fit to forward through Ray's runtime_env (which Ray logs): secret-named ones
    dropped, user:password stripped from URLs."""
    return {k: remove_userinfo(str(v)) for k, v in env.items()
            if not is_secret_name(k) and not _TOKEN_VALUE.match(str(v))}
