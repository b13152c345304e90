"""`http:` in the config: where the endpoint listens, and the token it asks for.

It binds to loopback unless the config names another address, and then only with a
token file, so a studio's network never gets an open port by accident."""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nstd.errors import ConfigError, shown

DEFAULT_LISTEN = "127.0.0.1:9650"


@dataclass(frozen=True)
class HttpConfig:
    host: str | None = "127.0.0.1"  # None: off
    port: int = 9650
    token_file: Path | None = None

    @property
    def on(self) -> bool:
        return self.host is not None

    def token(self) -> str | None:
        """The bearer token every request must carry, read when the endpoint starts."""
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"http.token_file: {self.token_file}: cannot read ({e.strerror})") from None
        if len(text) < 16:
            raise ConfigError(f"http.token_file: {self.token_file}: the token must be at least 16 characters")
        if os.stat(self.token_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"http.token_file: {self.token_file}: readable by others; chmod 600 it")
        return text


def parse(raw, root: Path) -> HttpConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"http: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"listen", "token_file"}
    if unknown:
        raise ConfigError(f"http.{str(sorted(unknown)[0])[:60]}: unknown key (known: listen, token_file)")
    listen = raw.get("listen", DEFAULT_LISTEN)
    if listen is False or listen == "off":  # YAML reads a bare off as false
        return HttpConfig(host=None)
    host, port = _address(listen)
    token = raw.get("token_file")
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"http.token_file: expected a path, got {shown(token)}")
    token_file = None if token is None else (Path(token).expanduser() if Path(token).expanduser().is_absolute()
                                             else root / token)
    if not _loopback(host) and token_file is None:
        raise ConfigError(f"http.listen: {host} is not loopback; set http.token_file (a bearer token for every "
                          f"request) to listen there, or listen on 127.0.0.1")
    return HttpConfig(host, port, token_file)


def _address(listen) -> tuple[str, int]:
    if not isinstance(listen, str) or ":" not in listen:
        raise ConfigError(f"http.listen: expected host:port (e.g. {DEFAULT_LISTEN}) or off, got {shown(listen)}")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"http.listen: expected an IP address and a port (e.g. {DEFAULT_LISTEN}), "
                          f"got {shown(listen)}") from None
    if not 1 <= number <= 65535:
        raise ConfigError(f"http.listen: port {number} is not between 1 and 65535")
    return host, number


def _loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback
