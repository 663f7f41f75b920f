"""The one validated `Settings` object. Built at the edge (`cli.py`); nothing else reads the
environment. Every field is also read from `DISCOVERD_<NAME>` (e.g. `DISCOVERD_ETCD`), and every
`serve` flag is the field of the same name (`--trusted-proxy` -> `trusted_proxy` ->
`DISCOVERD_TRUSTED_PROXY`). Old variable names still read, with a warning, are in
`DEPRECATED_ENV`."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float) -> float:
    """Seconds from `90`, `50s`, `1h30m`, `7d`, `250ms`. Raises ValueError otherwise."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", raw):
            seconds = float(raw)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(raw):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise ValueError(f"not a duration: {text!r} (use e.g. 50s, 10m, 7d, 1h30m)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


class HostPort(BaseModel):
    """A listen address. IPv6 hosts are written in brackets: `[::1]:8087`."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str) -> HostPort:
        if isinstance(text, HostPort):
            return text
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
        if not match:
            raise ValueError(f"not HOST:PORT: {text!r}")
        host = match.group(1) or match.group(3) or "0.0.0.0"  # noqa: S104 - ":8087" means all
        port = int(match.group(2) or match.group(4))
        return cls(host=host, port=port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, scheme: str = "http") -> str:
        host = self.host
        if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listen is reached on loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return (
            f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"
        )


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {url!r}")
    return url


class Settings(BaseSettings):
    """Everything `discoverd serve` can be told, validated once."""

    model_config = SettingsConfigDict(env_prefix="DISCOVERD_", frozen=True, extra="forbid")

    listen: Annotated[HostPort, NoDecode] = HostPort(host="127.0.0.1", port=8087)
    public_url: str | None = None
    grpc_listen: Annotated[HostPort, NoDecode] = HostPort(host="127.0.0.1", port=8379)
    grpc_public_endpoints: Annotated[tuple[str, ...], NoDecode] = ()
    grpc_cert: Path | None = None
    grpc_key: Path | None = None
    dns_listen: Annotated[HostPort, NoDecode] = HostPort(host="127.0.0.1", port=8053)
    dns_zone: str = "etcd.internal"
    dns_rate: float = Field(default=100.0, ge=0)  # UDP responses/s per /24 or /56, burst 2x
    etcd: Annotated[tuple[str, ...], NoDecode] = ()
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_user: str | None = None
    etcd_password: SecretStr | None = None
    etcd_password_file: Path | None = None
    data_dir: Path = Path("./discoverd-data")
    token_ttl: float = 7 * 86400
    max_size: int = Field(default=99, ge=1, le=999)
    default_size: int = Field(default=3, ge=1)
    wait_timeout: float = 50.0
    retry_window: float = 600.0
    new_rate: float = Field(default=2.0, ge=0)
    new_burst: int = Field(default=30, ge=1)
    new_per_hour: int = Field(default=1000, ge=0)  # per client /24 (IPv6: /64); 0 = off
    max_tokens: int = Field(default=100_000, ge=1)  # live tokens in all
    etcd_timeout: float = 2.0
    cert_ttl: float = 90 * 86400
    trusted_proxy: Annotated[tuple[str, ...], NoDecode] = ()
    service_key_file: Path | None = None
    service_key: SecretStr | None = None
    etcd_binary: Path | None = None
    log_level: str = "info"
    log_format: str = "json"
    _etcd_secret: str | None = PrivateAttr(default=None)
    admin_token_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then DISCOVERD_<NAME>, then the deprecated names (the current name wins).
        deprecated = _DeprecatedEnv(settings_cls)
        return init_settings, env_settings, deprecated, dotenv_settings, file_secret_settings

    @field_validator("listen", "dns_listen", "grpc_listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return HostPort.parse(value) if isinstance(value, str) else value

    @field_validator("etcd", mode="before")
    @classmethod
    def _etcd(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return tuple(_check_url(url.rstrip("/"), "--etcd endpoint") for url in value)

    @field_validator("grpc_public_endpoints", mode="before")
    @classmethod
    def _grpc_public(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return tuple(str(HostPort.parse(endpoint)) for endpoint in value)

    @field_validator("etcd_cacert", "etcd_cert", "etcd_key", "etcd_password_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("etcd_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("--etcd-user is empty")
        return value

    @field_validator("trusted_proxy", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return tuple(str(ipaddress.ip_network(net, strict=False)) for net in value)

    @field_validator("dns_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone = value.strip().rstrip(".").lower()
        labels = zone.split(".")
        if not all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels):
            raise ValueError(f"not a DNS zone name: {value!r}")
        return zone

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value.rstrip("/"), "--public-url")

    @field_validator(
        "token_ttl", "wait_timeout", "etcd_timeout", "cert_ttl", "retry_window", mode="before"
    )
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log level must be debug, info, warning or error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("json", "text"):
            raise ValueError("log format must be json or text")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_size > self.max_size:
            raise ValueError(f"default size {self.default_size} exceeds --max-size {self.max_size}")
        if self.wait_timeout > 3600:
            raise ValueError("--wait-timeout above 1h would hold connections forever")
        if self.token_ttl < 60:
            raise ValueError("--token-ttl below 60s cannot outlive a bootstrap")
        if (self.grpc_cert is None) != (self.grpc_key is None):
            raise ValueError("--grpc-cert and --grpc-key go together")
        if self.cert_ttl < 3600:
            raise ValueError("--cert-ttl below 1h would expire before a member is up")
        self._etcd_secret = _etcd_secret(self)
        _check_etcd_tls(self)
        return self

    @property
    def etcd_secret(self) -> str | None:
        """The etcd RBAC password, from --etcd-password or --etcd-password-file."""
        return self._etcd_secret

    @property
    def base_url(self) -> str:
        """Base of the URLs that `/new` hands out."""
        return self.public_url or self.listen.url()

    @property
    def v3_endpoints(self) -> tuple[str, ...]:
        """The `--discovery-endpoints` that v3 members are told to use."""
        if self.grpc_public_endpoints:
            return self.grpc_public_endpoints
        return (self.grpc_listen.url().partition("://")[2],)

    @property
    def grpc_tls(self) -> bool:
        return self.grpc_cert is not None

    @property
    def route_prefix(self) -> str:
        """Path of the public URL ('' or '/discovery'): the token routes are mounted under it."""
        return urlsplit(self.base_url).path.rstrip("/")

    @property
    def embedded(self) -> bool:
        return not self.etcd

    @property
    def service_key_path(self) -> Path:
        """Where the service key that seals CA keys is kept (created if absent)."""
        return self.service_key_file or self.data_dir / "service.key"


def _etcd_secret(settings: Settings) -> str | None:
    """The password of --etcd-user; both given or neither, and from one source."""
    password, path = settings.etcd_password, settings.etcd_password_file
    if password is not None and path is not None:
        raise ValueError("give --etcd-password or --etcd-password-file, not both")
    secret = password.get_secret_value() if password is not None else None
    if path is not None:
        try:
            secret = path.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--etcd-password-file {path}: cannot read it ({exc})") from None
    if settings.etcd_user and not secret:
        raise ValueError("--etcd-user needs --etcd-password or --etcd-password-file")
    if secret and not settings.etcd_user:
        raise ValueError("an etcd password needs --etcd-user")
    if settings.etcd_user and not settings.etcd:
        raise ValueError("--etcd-user applies to an --etcd cluster; the embedded etcd has no auth")
    return secret


def _check_etcd_tls(settings: Settings) -> None:
    """The TLS files load, the key matches the certificate, and an https endpoint uses them."""
    cacert, cert, key = settings.etcd_cacert, settings.etcd_cert, settings.etcd_key
    if (cert is None) != (key is None):
        raise ValueError("--etcd-cert and --etcd-key go together")
    if cacert is None and cert is None:
        return
    if not any(url.startswith("https://") for url in settings.etcd):
        raise ValueError("--etcd-cacert/--etcd-cert need an https:// --etcd endpoint")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cacert is not None:
            context.load_verify_locations(cafile=str(cacert))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--etcd-cacert {cacert}: not a PEM CA certificate ({exc})") from None
    try:
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"--etcd-cert {cert} / --etcd-key {key}: not a PEM certificate and its key ({exc})"
        ) from None


# Old environment variable -> the field it still sets (with a warning: `deprecated_variables`).
DEPRECATED_ENV = {"DISCOVERD_TRUSTED_PROXIES": "trusted_proxy"}


def _new_name(field: str) -> str:
    return "DISCOVERD_" + field.upper()


class _DeprecatedEnv(PydanticBaseSettingsSource):
    """The variables of `DEPRECATED_ENV`, below the current names in priority."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for old, target in DEPRECATED_ENV.items():
            if target == field_name and old in os.environ:
                return os.environ[old], old, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            target: os.environ[old] for old, target in DEPRECATED_ENV.items() if old in os.environ
        }


def deprecated_variables() -> list[str]:
    """A warning for each deprecated variable that is set (for `serve` to log at start)."""
    warnings = []
    for old, field in DEPRECATED_ENV.items():
        if old in os.environ:
            new = _new_name(field)
            ignored = f" ({new} is set too and wins)" if new in os.environ else ""
            warnings.append(f"{old} is deprecated and will be removed: use {new}{ignored}")
    return warnings


def specific_address(host: str) -> str | None:
    """`host` if it is one IP address (not a wildcard), else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address.is_unspecified else str(address)
