"""Where the client finds its gateway, token and CA: ``SKYBUS_URL``/``SKYBUS_API_TOKEN``/``SKYBUS_CA``,
else the file ``skybus login`` wrote (``$XDG_CONFIG_HOME/skybus/config.toml``, readable by its owner
only). Without a CA an https:// gateway is verified against the system's trust store.

The agent's ``SKYBUS_TOKEN`` is a host's credential and is never read here.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

URL_ENV = "SKYBUS_URL"
TOKEN_ENV = "SKYBUS_API_TOKEN"
CA_ENV = "SKYBUS_CA"


class NotConfigured(Exception):
    """No gateway URL or no token: the message says how to give them."""


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str
    ca: str | None = None  # a CA file (absolute path) that verifies an https:// gateway


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "skybus" / "config.toml"


def _read_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise NotConfigured(f"{path} is not valid TOML ({error}): run `skybus login URL` again") from None
    return {key: value for key, value in data.items() if isinstance(value, str)}


def load_config() -> ClientConfig:
    """The environment wins over the file, key by key."""
    path = config_path()
    stored = _read_file(path)
    url = os.environ.get(URL_ENV) or stored.get("url")
    token = os.environ.get(TOKEN_ENV) or stored.get("token")
    if not url or not token:
        raise NotConfigured(
            f"no gateway configured: run `skybus login URL` or set {URL_ENV} and {TOKEN_ENV} (looked in {path})"
        )
    ca = os.environ.get(CA_ENV) or stored.get("ca")
    return ClientConfig(url=normal_url(url), token=token, ca=ca)


def normal_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


def save_config(config: ClientConfig) -> Path:
    """Write the file with mode 0600 from its first byte (it holds a bearer token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A JSON string is a valid TOML basic string for every value we write (URLs and tokens).
    text = f"url = {json.dumps(config.url)}\ntoken = {json.dumps(config.token)}\n"
    if config.ca is not None:
        text += f"ca = {json.dumps(config.ca)}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    return path
