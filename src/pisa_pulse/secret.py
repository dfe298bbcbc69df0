"""Passwords as a type, and the one scrubber of secrets from any text.

A password never travels inside a DSN: `split_password` takes it out of a URL (its user part or a
`password=` query option) into a `Secret`, and `sources.databases.connect` hands it to the driver as
its own argument. A `Secret` shows `***` in every repr and str (a log line, a traceback's locals, a
dataclass's repr); only `reveal()` gives the value, at the one place that needs it.

`write_private` is how every file that holds a secret is written (the sources config, the pgpass
file, the API's and the traffic's tokens).

`scrub` is what every error text goes through before it reaches a log, `/api/status` or the
terminal. It removes the literal value of every `Secret` this process has made (plain and
percent-encoded: libpq quotes parts of a URI in its errors) as well as whatever has the shape of a
password: `scheme://user:PASSWORD@` (the user may be empty), `?password=`/`&password=`, and
`password=...` in key=value connection strings, quoted or not.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
# Literal values shorter than this are not scrubbed as text (a one-letter password would blank that
# letter in every error); the shapes below still catch them where a DSN spells them out.
LITERAL_MIN = 4
_known: set[str] = set()  # every secret value this process has made, and its URL-encoded form


class Secret:
    """A password: `***` wherever it is shown; `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= LITERAL_MIN:
            _known.update({value, quote(value, safe="")})

    def reveal(self) -> str:
        """The password itself, for the driver."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))  # crosses to the capture process, which connects with it


_URL_PASSWORD = re.compile(r"(\b[a-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s\"']*", re.IGNORECASE)
_KV_PASSWORD = re.compile(
    r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\"&]+)", re.IGNORECASE
)


def scrub(text: str) -> str:
    """`text` with every known secret value and everything shaped like a password replaced by ***."""
    for value in sorted(_known, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _QUERY_PASSWORD.sub(rf"\1{MASK}", text)
    return _KV_PASSWORD.sub(rf"\1{MASK}", text)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only, atomically.

    A new temporary file beside it (O_EXCL|O_NOFOLLOW, mode 0600) is renamed over `path`, so whatever
    was there (a file of another mode, a symlink to elsewhere) is replaced, never written through,
    and a reader never sees half a file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def split_password(dsn: str) -> tuple[str, Secret | None]:
    """A URL DSN without its password (user part or `password=` option), and that password.

    Anything that is not a URL is returned as it is, with no password.
    """
    parts = urlsplit(dsn)
    if "://" not in dsn or not parts.scheme:
        return dsn, None
    found: str | None = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        if colon:
            found = unquote(password)
            netloc = f"{user}@{host}" if user else host
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() != "password"]
    if len(kept) != len(pairs):
        found = next(v for k, v in pairs if k.lower() == "password")
        query = urlencode(kept, safe="/", quote_via=quote)
    if found is None:
        return dsn, None
    return urlunsplit(parts._replace(netloc=netloc, query=query)), Secret(found)
