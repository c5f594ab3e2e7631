"""config.toml as pydantic models.

Unknown keys are errors and every error names the key path and the value it got, because an aggregator editing
a file on a gateway over SSH has nothing else to go on. Types are strict: `enabled = "yes"` or `poll_period_s = "1"`
is a mistake to report, not a value to coerce (TOML integers still fill float keys). The `[simulation]` table belongs
to sim_devices and is validated there; the agent only carries it along. What can only be checked by opening files
(secrets, the CA certificate, the state file) is checked at start-up by agent/preflight.py.
"""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.addressing import Placement, expand_group, index_placements


class ConfigError(ValueError):
    """The config file is unreadable or invalid; str() is the full message for the user."""


class Strict(BaseModel):
    # TOML allows nan and inf; no setting of ours means anything with them (a NaN target would command full power).
    # strict: no coercion from strings or bools ("yes" is not true, "1" is not 1.0, true is not 1); pydantic's
    # strict mode still takes an int for a float and TOML's own date/time values for datetime fields.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


def _host(value: str) -> str:
    # "" makes paho raise at connect (a traceback from the link) and leaves a Modbus client retrying forever
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must be a host name or IP address, without spaces")
    return value


def _file_path(value: str) -> str:
    # "" would mean "no file" to some callers and a temporary database to sqlite; NUL makes open() raise ValueError
    if not value.strip() or "\x00" in value:
        raise ValueError("must be a file path")
    return value


Host = Annotated[str, AfterValidator(_host)]
FilePath = Annotated[str, AfterValidator(_file_path)]


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (so traffic to it never crosses a network)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls_context(cert_file: str | None, key_file: str | None, client_ca_file: str | None = None) -> (
    ssl.SSLContext | None
):
    """The TLS context of a server the agent runs (the status page, the CSMS): TLS 1.2 at least, client certificates
    required when a CA for them is given; None without a certificate. OSError or ssl.SSLError for a file that cannot
    be loaded (agent/preflight.py reports it with its key path)."""
    if cert_file is None or key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca_file)
    return context


def read_secret(table: str, env: str | None, file: str | None) -> str | None:
    """A password from the environment variable named `env` or the file named `file` (e.g. a systemd credential;
    surrounding whitespace dropped), None when neither is set; ConfigError naming `table`'s key otherwise. The one
    rule for every secret the config points at, so `[mqtt]` and `[web]` cannot come to read them differently."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{table}.password_env: environment variable {env} is not set")
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{table}.password_file: cannot read {file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{table}.password_file: {file} is not UTF-8 text ({exc.reason})") from exc
    return None


def plain_topic(value: str) -> str:
    """A topic to publish or subscribe to literally: no wildcards, no empty level (so no '/' at either end)."""
    if "+" in value or "#" in value or "\x00" in value or "" in value.split("/"):
        raise ValueError("must be a plain topic: no wildcards (+, #), no empty level, no '/' at either end")
    return value


class AgentSettings(Strict):
    poll_period_s: float = Field(1.0, gt=0.05, le=3600, description="control period: poll, decide, write")
    poll_timeout_s: float = Field(0.5, gt=0, le=60, description="per-request timeout toward one device")
    unavailable_after: int = Field(3, ge=1, le=1000, description="failed polls in a row before an asset is out")
    max_backoff_s: float = Field(30.0, ge=0, le=3600, description="longest wait between polls of a dead asset")
    lease_timeout_s: float = Field(
        10.0, ge=1, le=65535, description="device-side setpoint lease written to devices (whole seconds of device time)"
    )
    setpoint_deadband_w: float = Field(50.0, ge=0, description="rewrite a setpoint only past this change")
    response_s: float = Field(
        5.0, gt=0, le=600, description="device seconds an asset may take to answer a setpoint told anew: a reading "
        "older than the poll, measured sooner and not within setpoint_deadband_w of it, may show the asset on its way "
        "and counts as anywhere between it and the setpoint"
    )
    state_file: FilePath = Field(
        "vpp-state.sqlite3", description="SQLite file of accepted signals and event progress (':memory:' for none)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _timeout_fits_period(self) -> AgentSettings:
        if self.poll_timeout_s >= self.poll_period_s:
            raise ValueError(
                f"poll_timeout_s ({self.poll_timeout_s}) must be below poll_period_s ({self.poll_period_s}) "
                "or one dead device stretches every cycle"
            )
        least = self.min_lease_s(self.poll_period_s, self.poll_timeout_s)
        if self.lease_timeout_s < least:
            raise ValueError(
                f"lease_timeout_s ({self.lease_timeout_s}) must be at least {least:g} s (2 x poll_period_s + "
                "poll_timeout_s) or a single slow cycle lets every device's lease lapse"
            )
        return self

    @staticmethod
    def min_lease_s(period_s: float, timeout_s: float) -> float:
        return float(math.ceil(2 * period_s + timeout_s))


class SiteSettings(Strict):
    import_limit_w: float = Field(math.inf, gt=0, description="maximum import at the site meter")
    export_limit_w: float = Field(math.inf, ge=0, description="maximum export at the site meter")
    meter: str | None = Field(None, description="asset id of the meter at the site connection point")
    # What the site draws besides the controlled assets lies in [base_load_min_w - pv_max_w, base_load_max_w]; a meter
    # reading that implies otherwise (beyond meter_tolerance_w) is not believed (control/meter check).
    base_load_min_w: float = Field(0.0, ge=0, description="least load of the site besides its controlled assets")
    base_load_max_w: float | None = Field(
        None, gt=0, description="most load of the site besides its controlled assets; None: no meter plausibility check"
    )
    pv_max_w: float = Field(0.0, ge=0, description="most PV (or other generation) behind the site meter")
    currency: str = Field(
        "JPY", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of every price in config and signals (per kWh)"
    )
    meter_tolerance_w: float = Field(
        2000.0, ge=0, description="meter vs. assets + base-load range disagreement tolerated (timing, meter error)"
    )

    @model_validator(mode="after")
    def _base_load_range(self) -> SiteSettings:
        if self.base_load_max_w is not None and self.base_load_max_w < self.base_load_min_w:
            raise ValueError(
                f"base_load_max_w ({self.base_load_max_w:g}) must be at least "
                f"base_load_min_w ({self.base_load_min_w:g})"
            )
        return self


class ControlSettings(Strict):
    mode: Literal["dispatch", "site_target", "idle"] = Field(
        "dispatch",
        description="dispatch: execute the optimiser's schedule (the site_target rule covers assets and times no "
        "plan does); site_target: the rule controller alone, holding the site meter at site_target_w; idle: 0 W",
    )
    site_target_w: float = Field(0.0, description="import at the site meter the rule controller steers to")


class DispatchSettings(Strict):
    """The optimiser (agent/dispatch): rolling horizon, prices when no price signal has come, solver budget."""

    step_s: float = Field(900.0, ge=60, le=3600, description="planning step")
    horizon_steps: int = Field(96, ge=2, le=2000, description="steps planned ahead (96 x 15 min = 24 h)")
    time_budget_s: float = Field(10.0, gt=0, le=600, description="solver time; past it the last plan runs on")
    default_price_per_kwh: float = Field(
        25.0, description="energy price while no price signal covers a step and no price_profile_per_kwh is set"
    )
    # a flat default leaves the optimiser nothing to shift energy for, so a site without a price feed either idles or
    # (with no value on stored energy) sells everything at once; a time-of-use day gives it the shape of the market
    price_profile_per_kwh: list[float] | None = Field(
        None,
        description="price per local hour (24 values) or half hour (48) of [events] timezone, from midnight, while "
        "no price signal covers a step; None: default_price_per_kwh flat",
    )
    base_load_w: float | None = Field(None, description="uncontrolled load forecast; None: the last measured")
    wear_segments: int = Field(4, ge=1, le=16, description="cycle-depth segments of the wear cost (Xu et al.)")
    # 300: the full LP re-solves 300 EVs in ~3 s (inside the default budget) and holds every reserve exactly; the
    # aggregate is 6x faster there and as cheap (0.000 %, 0.78 % at 1000 EVs), but holds a member's reserve energy
    # only softly (bench/dispatch.py, README "Dispatch")
    # The solver process (agent/dispatch/worker.py) is retired after this many solves (~a day of 15-min steps plus
    # re-plans on signals): a safety net, since a solve leaves nothing behind that grows (the planner bounds its model
    # cache and drops HiGHS' copy) ... or once its RSS after a solve passes solver_recycle_rss_mb: after a re-plan it
    # holds ~175 MB with 100 EVs + 2 batteries, ~265 MB at 300 EVs (the full LP's limit), and each further cached
    # problem shape adds ~40 MB at 100 EVs (bench/dispatch_memory.py).
    solver_recycle_solves: int = Field(
        100, ge=1, le=100_000, description="the solver process is replaced after this many solves"
    )
    solver_recycle_rss_mb: float = Field(
        768.0, ge=64, le=65536, description="the solver process is replaced once its memory after a solve passes this"
    )
    aggregate_above_evs: int = Field(
        300, ge=0, description="more EVs than this: plan them as virtual batteries and split the result (fast, approx.)"
    )

    @field_validator("price_profile_per_kwh")
    @classmethod
    def _day_profile(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (24, 48):
            raise ValueError(
                f"needs 24 hourly or 48 half-hourly prices (a local day from midnight), got {len(value)} values"
            )
        return value


class EventSettings(Strict):
    """Grid events (agent/events/lifecycle.py): M&V intervals and baselines, and the local-frequency droop for FCR."""

    timezone: str = Field("Asia/Tokyo", description="zone of the settlement day: like-days and intervals")
    holiday_country: str | None = Field(
        "JP", description="public holidays count as weekend like-days (ISO country code; None: weekends only)"
    )
    interval_s: float = Field(1800.0, ge=60, le=3600, description="M&V interval (JEPX / ERAB: 30 min)")
    history_days: float = Field(60.0, ge=7, le=400, description="meter interval history kept for baselines")
    report_keep_days: float = Field(
        400.0, ge=1, le=3660, description="finished events and their M&V reports are kept this long after they end"
    )
    pre_event_s: float = Field(1800.0, ge=60, le=86400, description="window of the pre-event-average baseline")
    nominal_hz: Literal[50, 60] = Field(50, description="grid frequency: 50 Hz east Japan, 60 Hz west")
    deadband_hz: float = Field(0.2, ge=0, le=1, description="FCR deadband (0.3 in Hokkaido)")
    droop: float = Field(0.05, gt=0, le=0.2, description="FCR droop as a fraction of nominal frequency")
    rated_w: float | None = Field(
        None, gt=0, description="power the droop refers to; None: the fleet's rated power when the signal arrives"
    )
    frequency_timeout_s: float = Field(
        10.0, gt=0, le=600, description="no frequency reading this long: the droop's output returns to 0"
    )

    @field_validator("interval_s")
    @classmethod
    def _divides_day(cls, value: float) -> float:
        if 86400 % value:
            raise ValueError(f"interval_s {value:g} must divide a day (86400 s) so intervals are numbered per day")
        return value

    @field_validator("holiday_country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        # the registry's code list, not holidays.list_supported_countries(): that imports every calendar (~6 MB of
        # the gateway's RSS); the same codes (checked on 0.109), and the call exists since 0.50, the lower bound
        from holidays.registry import EntityLoader

        if value is not None and value not in EntityLoader.get_country_codes():
            raise ValueError(f"no public-holiday calendar for {value!r} (an ISO 3166 code such as 'JP')")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Asia/Tokyo')") from exc
        return value


class SignalSettings(Strict):
    """Sanity windows and retention for grid signals (agent/signals): what is refused and what is kept how long."""

    clock_skew_s: float = Field(
        5.0, ge=0, le=300, description="a signal time this far ahead of the agent's clock is still accepted"
    )
    horizon_days: float = Field(400.0, ge=1, le=3660, description="events and prices may start at most this far ahead")
    keep_days: float = Field(30.0, ge=1, le=3660, description="signals are kept this long after they end, then pruned")
    max_pending: int = Field(
        1000, ge=1, le=100_000, description="signals of one kind not yet ended; more are refused until some end"
    )


class MqttSettings(Strict):
    """The broker the agent publishes telemetry to, takes signals from and reaches MQTT-bridged devices through.

    Secrets never sit in the file: the password comes from the environment variable named by `password_env` or
    from the file named by `password_file` (e.g. a systemd credential).
    """

    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("vpp-agent", min_length=1, max_length=64)
    username: str | None = None
    password_env: str | None = Field(
        None, min_length=1, description="name of the environment variable holding the password"
    )
    password_file: FilePath | None = Field(None, description="path of a file holding the password")
    ca_file: FilePath | None = Field(None, description="CA certificate (PEM); setting it turns TLS on")
    cert_file: FilePath | None = Field(None, description="client certificate (PEM) the agent shows the broker")
    key_file: FilePath | None = Field(None, description="private key (PEM) of cert_file")
    insecure: bool = Field(
        False, description="allow a broker beyond this host without TLS (a lab only; warned at every start)"
    )
    topic_prefix: str = Field("vpp/site", min_length=1, description="root of the agent's topic tree (docs/mqtt.md)")
    keepalive_s: int = Field(30, ge=5, le=3600)
    buffer_limit: int = Field(10000, ge=1, le=10_000_000, description="telemetry kept while the broker is away")
    max_payload_bytes: int = Field(65536, ge=256, le=16 * 1024 * 1024, description="larger signals are rejected")

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("cert_file needs ca_file: a client certificate is only shown over TLS")
        if self.enabled and self.ca_file is None and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"host = {self.host!r} is beyond this host and ca_file is not set: passwords and commands "
                "would cross the network in clear text; set ca_file (TLS), or insecure = true for a lab"
            )
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return plain_topic(value)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context the link connects with (None: no TLS); raises OSError or ssl.SSLError for a CA file
        that cannot be loaded, which agent/preflight.py reports before start-up."""
        if self.ca_file is None:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def password(self) -> str | None:
        """Read the secret now (at start-up), so a missing one fails before anything connects."""
        return read_secret("mqtt", self.password_env, self.password_file)


class MetricsSettings(Strict):
    """The Prometheus endpoint (agent/metrics.py): read-only figures of the running agent, for a scraper."""

    enabled: bool = Field(False, description="serve /metrics over HTTP")
    host: Host = Field("127.0.0.1", description="address to listen on; beyond this host, firewall it")
    port: int = Field(9108, ge=1, le=65535)


class WebSettings(Strict):
    """The read-only local status page (agent/web/, docs/web.md). On this host it needs nothing else; beyond it, TLS
    and a login, so neither the site's state nor a future write action crosses a network in the clear or without a
    password. The page has no write action: one added later must take a signed command through the same gate as
    signals (agent/trust), not this login."""

    enabled: bool = Field(False, description="serve the status page over HTTP(S)")
    host: Host = Field("127.0.0.1", description="address to listen on; beyond this host TLS and a login are required")
    port: int = Field(8088, ge=1, le=65535)
    cert_file: FilePath | None = Field(None, description="server certificate (PEM); setting it turns TLS on")
    key_file: FilePath | None = Field(None, description="private key (PEM) of cert_file")
    # HTTP Basic (RFC 7617): the name ends at the first colon, so a name holding one could never log in
    username: str | None = Field(
        None, min_length=1, pattern=r"^[^:\x00-\x1f]+$", description="login name; with a password, every page needs it"
    )
    password_env: str | None = Field(
        None, min_length=1, description="name of the environment variable holding the password"
    )
    password_file: FilePath | None = Field(None, description="path of a file holding the password")
    refresh_s: float = Field(2.0, ge=0.5, le=3600, description="how often the page fetches the agent's state")

    @model_validator(mode="after")
    def _check(self) -> WebSettings:
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        has_password = bool(self.password_env or self.password_file)
        if (self.username is None) == has_password:
            raise ValueError("username and a password (password_env or password_file) go together")
        if self.enabled and not is_loopback(self.host) and (self.cert_file is None or self.username is None):
            raise ValueError(
                f"host = {self.host!r} is beyond this host: set cert_file/key_file (TLS) and username with "
                "password_env or password_file, so the site's state never crosses a network in the clear or "
                "without a login"
            )
        return self

    def password(self) -> str | None:
        """The login's password, read now (at start-up); ConfigError when it cannot be read or is empty (an empty
        password would let anyone who knows the name in)."""
        value = read_secret("web", self.password_env, self.password_file)
        if value == "":
            key = f"password_env: {self.password_env}" if self.password_env else ""
            where = key or f"password_file: {self.password_file}"
            raise ConfigError(f"web.{where} is empty")
        return value

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None: plain HTTP); OSError or ssl.SSLError for a file that cannot be loaded."""
        return server_tls_context(self.cert_file, self.key_file)


class HomeAssistantSettings(Strict):
    """MQTT discovery for Home Assistant (agent/homeassistant.py): a sensor per asset's power, SoC and status and
    for the VPP envelope, so a Home Assistant user sees the site without writing YAML. Needs [mqtt] enabled."""

    enabled: bool = Field(False, description="publish discovery messages and plain state topics for Home Assistant")
    discovery_prefix: str = Field("homeassistant", min_length=1, description="Home Assistant's discovery prefix")
    every_s: float = Field(10.0, ge=1, le=3600, description="how often the plain state topics are refreshed")

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return plain_topic(value)


KEY_ID_PATTERN = r"^[A-Za-z0-9._:@\-]{1,64}$"


class TrustedKey(Strict):
    """A public key the site trusts, and the signal kinds its holder may send (docs/security.md)."""

    kid: str = Field(pattern=KEY_ID_PATTERN, description="key id; signed commands name it in their JWS header")
    public_key: str = Field(
        pattern=r"^[A-Za-z0-9_-]{43}$", description="Ed25519 public key, base64url of its 32 bytes (a JWK's x)"
    )
    kinds: list[str] = Field(min_length=1, description="signal kinds this key may send")
    issuer: str = Field("", max_length=64, description="who holds the key (for logs and the audit trail)")
    revoked: bool = Field(False, description="true: every command signed by this key is refused")

    @field_validator("public_key")
    @classmethod
    def _usable_key(cls, value: str) -> str:
        from agent.trust.keys import KeyFileError, jwk_public

        try:
            jwk_public(value)
        except (KeyFileError, ValueError) as exc:
            raise ValueError(f"not an Ed25519 public key: {exc}") from exc
        return value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        from agent.signals.models import SIGNAL_TYPES

        unknown = [k for k in value if k not in SIGNAL_TYPES]
        if unknown:
            raise ValueError(f"unknown signal kind(s) {unknown}; known: {', '.join(SIGNAL_TYPES)}")
        return value


class TrustSettings(Strict):
    """Who may command the site: signed commands (agent/trust), the keys the site trusts and the agent's own key.

    `require_signatures` unset means: required whenever MQTT is on (`AppConfig.signatures_required`), so a
    deployment cannot end up unsigned by leaving a setting out; a lab says `require_signatures = false`.
    """

    require_signatures: bool | None = Field(
        None, description="unset: required whenever MQTT is enabled (signals can then come from the broker)"
    )
    site_id: str | None = Field(None, pattern=KEY_ID_PATTERN, description="the site id signed commands must name")
    max_validity_s: float = Field(
        86400.0, gt=0, le=30 * 86400, description="longest exp - iat accepted: bounds how long a command can replay"
    )
    replay_window: int = Field(
        4096, ge=16, le=1_000_000, description="sequence numbers per key accepted out of order (QoS 1 redelivery)"
    )
    agent_key_file: FilePath | None = Field(
        None, description="the agent's Ed25519 private key (PEM): signs its acks, status and audit head"
    )
    agent_kid: str | None = Field(None, pattern=KEY_ID_PATTERN, description="key id of agent_key_file")
    keys: list[TrustedKey] = Field(default_factory=list, description="public keys the site trusts")
    audit_keep_days: float = Field(
        400.0, ge=1, le=3660, description="audit rows are kept this long; the oldest kept row anchors the chain"
    )
    audit_head_every_s: float = Field(
        300.0, ge=10, le=86400, description="how often the signed head of the audit chain is published"
    )
    audit_refusal_samples: int = Field(
        20, ge=0, le=10_000, description="refused commands kept per reason and hour (the rest are counted)"
    )

    @model_validator(mode="after")
    def _check(self) -> TrustSettings:
        kids = [k.kid for k in self.keys]
        repeated = sorted({k for k in kids if kids.count(k) > 1})
        if repeated:
            raise ValueError(f"trust.keys: kid {repeated[0]!r} is listed twice")
        if (self.agent_key_file is None) != (self.agent_kid is None):
            raise ValueError("trust.agent_key_file and trust.agent_kid go together: set both or neither")
        if self.require_signatures and self.site_id is None:
            raise ValueError("trust.require_signatures is true but trust.site_id is not set: commands must name it")
        return self


# OCPP's identifierString, the set a charging station identity is drawn from (it ends the station's URL)
OCPP_IDENTITY_PATTERN = r"^[A-Za-z0-9*\-_=:+|@.]{1,48}$"


class OcppSettings(Strict):
    """The CSMS inside the agent (drivers/ocpp, docs/ocpp.md): OCPP 2.1 charging stations dial in over WebSocket.

    Security profile 2 (TLS + HTTP Basic per station) by default, profile 3 (client certificates) with
    client_ca_file; profile 1 (Basic over plain WebSocket) only with `insecure = true`, which warns at every start.
    Passwords never sit in this file: a JSON object {"<station id>": "<password>"} in password_file or in the
    environment variable password_env."""

    enabled: bool = Field(False, description="run the CSMS: accept OCPP 2.1 and 2.0.1 charging stations")
    host: Host = Field("127.0.0.1", description="address to listen on")
    port: int = Field(9000, ge=1, le=65535)
    path: str = Field("/ocpp", pattern=r"^(/[A-Za-z0-9._~-]+)*$", description="URL path before /<station id>")
    cert_file: FilePath | None = Field(None, description="server certificate (PEM); with key_file turns TLS on")
    key_file: FilePath | None = Field(None, description="private key (PEM) of cert_file")
    client_ca_file: FilePath | None = Field(
        None, description="CA (PEM) of station client certificates: set, every station must present one (profile 3)"
    )
    password_file: FilePath | None = Field(None, description='JSON file {"<station id>": "<password>"}')
    password_env: str | None = Field(None, min_length=1, description="environment variable holding that JSON")
    insecure: bool = Field(False, description="allow plain ws:// (security profile 1): for a lab only")
    heartbeat_interval_s: int = Field(60, ge=1, le=86400, description="Heartbeat interval given at BootNotification")
    meter_stale_after_s: float = Field(
        60.0, gt=0, le=3600, description="during a transaction, meter values older than this fail the asset's read"
    )
    response_timeout_s: float = Field(5.0, gt=0, le=120, description="wait for a station's answer to a CSMS call")
    max_message_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description="larger frames close the link")
    meter_interval_s: int = Field(
        5, ge=1, le=900, description="SampledDataCtrlr.TxUpdatedInterval set at boot: meter values every this many s"
    )
    id_tokens: Literal["accept_all", "list"] = Field(
        "accept_all", description="Authorize policy: accept every idToken, or only those in id_token_file"
    )
    id_token_file: FilePath | None = Field(None, description="with id_tokens = 'list': one idToken per line")

    @model_validator(mode="after")
    def _security(self) -> OcppSettings:
        if self.meter_interval_s >= self.meter_stale_after_s:
            raise ValueError(f"ocpp.meter_interval_s ({self.meter_interval_s}) must be below ocpp.meter_stale_after_s "
                             f"({self.meter_stale_after_s:g}): every reading would be stale before the next came")
        if (self.id_tokens == "list") != (self.id_token_file is not None):
            raise ValueError("ocpp.id_tokens = 'list' and ocpp.id_token_file go together: set both or neither")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("ocpp.cert_file and ocpp.key_file go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("ocpp.client_ca_file needs TLS: set ocpp.cert_file and ocpp.key_file")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("ocpp.password_file and ocpp.password_env: set one, not both")
        if not self.enabled:
            return self
        if self.cert_file is None and not self.insecure:
            raise ValueError(
                "ocpp.enabled needs TLS (ocpp.cert_file, ocpp.key_file), or ocpp.insecure = true for a lab"
            )
        if self.client_ca_file is None and self.password_file is None and self.password_env is None:
            raise ValueError("ocpp.enabled needs station passwords (ocpp.password_file or ocpp.password_env) "
                             "or client certificates (ocpp.client_ca_file)")
        return self

    def passwords(self) -> dict[str, str]:
        """Station id -> password, read now (at start-up) so a missing or malformed file fails before anything
        listens."""
        import json

        text = read_secret("ocpp", self.password_env, self.password_file)
        if text is None:
            return {}
        where = f"ocpp.password_env ({self.password_env})" if self.password_env else "ocpp.password_file"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: not a JSON object of station id to password: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
            raise ConfigError(f"{where}: must be a JSON object of station id to non-empty password string")
        return data

    def accepted_id_tokens(self) -> frozenset[str] | None:
        """The idTokens Authorize accepts, read now (at start-up); None when every idToken is accepted. The file has
        one idToken per line (the `idToken` string, any type); blank lines and lines starting with # are skipped."""
        if self.id_tokens == "accept_all" or self.id_token_file is None:
            return None
        try:
            text = Path(self.id_token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"ocpp.id_token_file: cannot read {self.id_token_file}: {exc}") from exc
        tokens = frozenset(t for line in text.splitlines() if (t := line.strip()) and not t.startswith("#"))
        too_long = sorted(t for t in tokens if len(t) > 255)  # IdTokenType.idToken is at most 255 characters
        if too_long:
            raise ConfigError(f"ocpp.id_token_file: {self.id_token_file}: idToken {too_long[0][:40]!r}... is longer "
                              "than OCPP's 255 characters")
        return tokens

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (client certificates required when client_ca_file is set); None without TLS.
        Raises OSError/ssl.SSLError for a file that cannot be loaded."""
        return server_tls_context(self.cert_file, self.key_file, self.client_ca_file)


class AssetConfig(Strict):
    """One device, or a group of identical devices when `count` is set (see agent.addressing)."""

    id: str = Field(min_length=1)
    map: str | None = Field(
        None, min_length=1, description="device map id (drivers/maps or drivers/mqtt_maps) or a path; not for OCPP"
    )
    transport: str = Field(
        "modbus", description="modbus, mqtt, ocpp, sunspec, or a plugin's transport (agent/plugins.py)"
    )
    kind: Literal["battery", "ev_charger", "meter"] | None = Field(
        None, description="SunSpec: what the device is, when no product map (map) says so"
    )
    sunspec_control: Literal["auto", "704", "124", "none"] = Field(
        "auto", description="SunSpec: the control model (auto: 704 when present, else 124)"
    )
    station: str | None = Field(
        None, min_length=1, description="OCPP: charging station identity ({i} with count), e.g. \"CP{i:03d}\""
    )
    evse: int = Field(1, ge=1, le=1000, description="OCPP: the EVSE of the station this asset is")
    topic: str = Field("devices/{id}", description="MQTT devices: base topic, {id} is the asset id")
    host: Host = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=247)
    count: int | None = Field(None, ge=1, le=100000)
    units_per_port: int = Field(1, ge=1, le=247)
    rated_charge_w: float | None = Field(
        None, ge=0, description="nameplate override; the lower of this and the device's wins"
    )
    rated_discharge_w: float | None = Field(None, ge=0)
    ramp_w_per_s: float | None = Field(None, gt=0, description="agent-side ramp limit on setpoint changes")
    replacement_cost: float | None = Field(
        None, ge=0, description="batteries: cost of a new pack (currency); prices cycle-depth wear in the optimiser"
    )
    wear_price_per_kwh: float | None = Field(
        None, ge=0, description="EVs: the owner's own price per kWh discharged for V2G (overrides replacement_cost)"
    )
    efficiency: float = Field(0.95, gt=0, le=1, description="one-way conversion efficiency assumed for EV planning")
    # wear prices per pack (docs/wear.md): checked against the fitted data by _wear_model
    chemistry: str | None = Field(None, description="batteries/EVs: cell chemistry for wear prices (default lfp)")
    temperature_c: float | None = Field(None, description="batteries/EVs: pack temperature °C for wear (default 25)")
    wear_source: Literal["blast", "xu"] | None = Field(
        None, description="batteries/EVs: the battery model the wear prices are fitted to (default blast; docs/wear.md)"
    )
    wear_pricing: Literal["depreciation", "opportunity"] | None = Field(
        None,
        description="batteries: price a unit of life at the pack's cost (depreciation, default) or at what it "
        "earns, learnt online (opportunity; docs/wear.md)",
    )
    charge_taper_soc: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="SoC (0..1) above which the charge limit falls linearly to 0 at full (CC-CV), for the plan; "
        "1: no taper. Unset: EV chargers learn it from their live limits (agent/dispatch/taper.py)",
    )
    # Modbus links other than Modbus TCP, and per-connector objects (drivers/modbus.py, docs/devices.md)
    framing: Literal["tcp", "rtu"] = Field(
        "tcp", description="Modbus over TCP: 'tcp' (Modbus TCP) or 'rtu' (RTU frames through a serial gateway)"
    )
    serial: str | None = Field(None, min_length=1, description="serial RTU: the local port, e.g. /dev/ttyUSB0")
    baudrate: int = Field(19200, ge=300, le=921600, description="serial RTU line speed")
    parity: Literal["N", "E", "O"] = Field("N", description="serial RTU parity: N none, E even, O odd")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    connector: int | None = Field(
        None, ge=1, le=255, description="a map with [model.connector]: which connector's object this asset is"
    )

    @property
    def link(self) -> str:
        """What, with port and unit id, must be unique between assets: the serial line or the host, and the
        connector (two connectors of one charger share its unit id)."""
        where = f"serial:{self.serial}" if self.serial is not None else self.host
        return where if self.connector is None else f"{where}#connector{self.connector}"

    @model_validator(mode="after")
    def _modbus_link(self) -> AssetConfig:
        """Link keys belong to Modbus assets, serial-line keys to a serial asset, and a serial asset has no TCP
        endpoint; a mistake is named instead of ignored."""
        link = ("framing", "serial", "baudrate", "parity", "stopbits", "bytesize", "connector")
        given = [k for k in link if k in self.model_fields_set]
        if self.transport != "modbus" and given:
            raise ValueError(f"{', '.join(given)}: only for transport = 'modbus'")
        line = [k for k in ("baudrate", "parity", "stopbits", "bytesize") if k in self.model_fields_set]
        if self.serial is None and line:
            raise ValueError(f"{', '.join(line)}: serial-line settings need serial (the port, e.g. /dev/ttyUSB0)")
        if self.serial is not None:
            tcp = [k for k in ("host", "port", "framing") if k in self.model_fields_set]
            if tcp:
                raise ValueError(f"serial = {self.serial!r} is an RTU line: {', '.join(tcp)} are for TCP links")
        return self

    @field_validator("chemistry")
    @classmethod
    def _fitted_chemistry(cls, value: str | None) -> str | None:
        from agent.dispatch.wear_fits import check  # the fitted chemistries and temperatures live in its data file

        check(value, None)
        return value

    @field_validator("temperature_c")
    @classmethod
    def _fitted_temperature(cls, value: float | None) -> float | None:
        from agent.dispatch.wear_fits import check

        check(None, value)
        return value

    @model_validator(mode="after")
    def _opportunity_pricing(self) -> AssetConfig:
        """Opportunity pricing learns the value of a life from the replacement cost up (its seed), and it prices the
        wear the replacement cost would: an owner's own price per kWh leaves it nothing to replace. Stationary
        batteries only: an EV's driving takes its energy at no price, so the value of its life would go to 0. Where
        the kind is known here (OCPP: a charger; `kind`) it is checked here, else once the map is loaded
        (agent.wiring.asset_problems)."""
        if self.wear_pricing != "opportunity":
            return self
        if self.transport == "ocpp" or self.kind not in (None, "battery"):
            what = "an EV charger (transport = 'ocpp')" if self.transport == "ocpp" else f"kind = {self.kind!r}"
            raise ValueError(
                f"asset {self.id!r}: wear_pricing = 'opportunity' is for stationary batteries, not {what} (an EV's "
                f"driving takes its energy at no price: its value of a life would go to 0)"
            )
        if self.wear_price_per_kwh is not None:
            raise ValueError(
                f"asset {self.id!r}: wear_pricing = 'opportunity' and wear_price_per_kwh exclude each other (the "
                f"owner's own price is not learnt)"
            )
        if not self.replacement_cost:
            raise ValueError(
                f"asset {self.id!r}: wear_pricing = 'opportunity' needs a replacement_cost > 0 (the seed of the "
                f"value of a life, docs/wear.md)"
            )
        return self

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        from agent.plugins import check_transport  # the registry: built-ins, then installed plugins (names only)

        check_transport(value)
        return value

    @field_validator("topic")
    @classmethod
    def _topic_pattern(cls, value: str) -> str:
        try:
            sample = value.format(id="x")
        except (LookupError, AttributeError, ValueError) as exc:  # str.format raises all three on a bad pattern
            raise ValueError(f"may only use the placeholder {{id}} ({type(exc).__name__}: {exc})") from exc
        try:
            plain_topic(sample)
        except ValueError as exc:
            raise ValueError(f"with {{id}} filled in, {exc}") from exc
        return value

    def placements(self) -> list[Placement]:
        return expand_group(self.id, self.count, self.port, self.unit_id, self.units_per_port)

    @model_validator(mode="after")
    def _transport_keys(self) -> AssetConfig:
        sunspec_keys = [k for k in ("kind", "sunspec_control") if k in self.model_fields_set]
        if self.transport != "sunspec" and sunspec_keys:
            raise ValueError(f"{', '.join(sunspec_keys)}: only for transport = 'sunspec'")
        if self.transport == "sunspec":
            if self.station is not None or "evse" in self.model_fields_set:
                raise ValueError("station and evse are only for transport = 'ocpp'")
            if self.map is None and self.kind is None:
                raise ValueError("transport = 'sunspec' needs kind (battery, ev_charger, meter) or map (a SunSpec "
                                 "product map in drivers/sunspec/products, or a path)")
            return self  # the product map itself is loaded and checked with the others (agent.wiring.asset_problems)
        if self.transport == "ocpp":
            if self.station is None:
                raise ValueError("transport = 'ocpp' needs station (the charging station identity)")
            if self.map is not None:
                raise ValueError("transport = 'ocpp' takes no map: the protocol defines the fields")
            self.ocpp_targets()  # a bad station pattern fails here, with the config
        else:
            if self.map is None and self.transport in ("modbus", "mqtt"):  # a plugin's transport may need none
                raise ValueError(f"transport = '{self.transport}' needs map")
            if self.station is not None or "evse" in self.model_fields_set:
                raise ValueError("station and evse are only for transport = 'ocpp'")
        return self

    def ocpp_targets(self) -> list[tuple[str, str, int]]:
        """(asset id, station identity, EVSE id) of each OCPP asset of this entry; station ids follow the asset ids'
        numbering when `count` is set."""
        import re

        assert self.station is not None
        ids = [p.id for p in self.placements()]
        targets = []
        for n, asset_id in enumerate(ids, start=1):
            try:
                station = self.station.format(i=n) if self.count is not None else self.station
            except (LookupError, AttributeError, TypeError, ValueError) as exc:
                raise ValueError(f"station {self.station!r} is not a str.format pattern of {{i}} ({exc})") from exc
            if not re.match(OCPP_IDENTITY_PATTERN, station):
                raise ValueError(f"station {station!r} is not an OCPP identity (1-48 of A-Z a-z 0-9 *-_=:+|@.)")
            targets.append((asset_id, station, self.evse))
        if self.count is not None and len({t[1] for t in targets}) == 1 and len(targets) > 1:
            raise ValueError(f"station {self.station!r} needs an {{i}} placeholder when count is set")
        return targets


class AppConfig(Strict):
    agent: AgentSettings = AgentSettings()
    site: SiteSettings = SiteSettings()
    control: ControlSettings = ControlSettings()
    dispatch: DispatchSettings = DispatchSettings()
    mqtt: MqttSettings = MqttSettings()
    events: EventSettings = EventSettings()
    signals: SignalSettings = SignalSettings()
    trust: TrustSettings = TrustSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    ocpp: OcppSettings = OcppSettings()
    assets: list[AssetConfig] = Field(default_factory=list)
    simulation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_assets(self) -> AppConfig:
        seen = index_placements(
            "assets",
            [a.placements for a in self.assets],
            [a.link if a.transport in ("modbus", "sunspec") else None for a in self.assets],
        )
        self._check_ocpp_assets()
        if any(a.transport == "mqtt" for a in self.assets) and not self.mqtt.enabled:
            raise ValueError("assets use transport = 'mqtt' but mqtt.enabled is false")
        if self.homeassistant.enabled and not self.mqtt.enabled:
            raise ValueError("homeassistant.enabled needs mqtt.enabled: discovery goes over the broker")
        if self.site.meter is not None and self.site.meter not in seen:
            raise ValueError(f"site.meter: {self.site.meter!r} is not an asset id")
        if self.signatures_required and self.trust.site_id is None:
            raise ValueError(
                "signed commands are required (mqtt.enabled is true) but trust.site_id is not set: set it and "
                "trust.keys (docs/security.md), or trust.require_signatures = false for a lab"
            )
        return self

    def _check_ocpp_assets(self) -> None:
        """OCPP assets need the CSMS on, and each (station, EVSE) may be one asset only."""
        targets = [t for a in self.assets if a.transport == "ocpp" for t in a.ocpp_targets()]
        if targets and not self.ocpp.enabled:
            raise ValueError("assets use transport = 'ocpp' but ocpp.enabled is false")
        seen: dict[tuple[str, int], str] = {}
        for asset_id, station, evse in targets:
            if (station, evse) in seen:
                raise ValueError(f"assets: {asset_id!r} and {seen[station, evse]!r} are both station {station!r} "
                                 f"EVSE {evse}")
            seen[station, evse] = asset_id

    @property
    def signatures_required(self) -> bool:
        """Whether every signal must be signed: as configured, else whenever signals can come over MQTT. Not only
        when the agent's own link leaves this host: in the shipped layout the agent dials the broker over loopback
        while the signal publishers reach the same broker from the network."""
        if self.trust.require_signatures is not None:
            return self.trust.require_signatures
        return self.mqtt.enabled


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Every error of `exc` at once, one line each, in the words of the file: the key path as written, the value it
    got, and for a key no table knows, the table it is in and the nearest known key ("unknown key `poll_perod_s` in
    [agent]; did you mean `poll_period_s`?"). `model` is the model validated (AppConfig by default)."""
    model = model or AppConfig
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden" and loc:
            lines.append(f"  {_unknown_key(model, loc, err.get('input'))}")
            continue
        path = _key_path(loc)
        message = err["msg"].removeprefix("Value error, ")
        if not path:  # a check across tables: its message names the keys itself
            lines.append(f"  {message}")
            continue
        if err["type"] == "missing":
            lines.append(f"  {path}: required key missing{_in_table(loc[:-1])}")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {_bounded(got)})"
        lines.append(f"  {path}: {message}{shown}")
    return "\n".join(lines)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _table_name(loc: tuple[int | str, ...]) -> str:
    """How the file writes the table at `loc`: [agent], [[assets]] #2 (the second), [[trust.keys]] #1."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    if loc and isinstance(loc[-1], int):
        return f"[[{'.'.join(names)}]] #{loc[-1] + 1}"
    return f"[{'.'.join(names)}]"


def _in_table(loc: tuple[int | str, ...]) -> str:
    return f" in {_table_name(loc)}" if loc else ""


def _unknown_key(model: type[BaseModel], loc: tuple[int | str, ...], got: object) -> str:
    import difflib

    key, parent = str(loc[-1]), loc[:-1]
    what = "table" if isinstance(got, dict) else "key"
    where = f" in {_table_name(parent)}" if parent else " at the top level"
    known = _known_keys(model, parent)
    if not known:
        return f"unknown {what} `{key}`{where}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else "known: " + ", ".join(f"`{k}`" for k in sorted(known))
    return f"unknown {what} `{key}`{where}; {hint}"


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at `loc` may hold, found by walking the models' fields (lists, dicts and optional
    tables included); empty when the walk cannot tell."""
    import types
    import typing

    def models(annotation: object) -> list[type[BaseModel]]:
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        if origin in (typing.Union, types.UnionType, typing.Annotated):
            return [m for arg in typing.get_args(annotation) for m in models(arg)]
        return []

    def inner(annotation: object) -> object:
        """What a list's item or a dict's value is, through Optional."""
        for candidate in (annotation, *typing.get_args(annotation)):
            if typing.get_origin(candidate) in (list, dict, tuple):
                return typing.get_args(candidate)[-1]
        return None

    current: list[object] = [model]
    for part in loc:
        following: list[object] = []
        for node in current:
            if isinstance(part, int) or not (isinstance(node, type) and issubclass(node, BaseModel)):
                item = inner(node)
                if item is not None:
                    following += models(item) if models(item) else [item]
                continue
            field = node.model_fields.get(part)
            if field is not None:
                found = models(field.annotation)
                following += found if found else [field.annotation]
        current = following
    keys: set[str] = set()
    for node in current:
        if isinstance(node, type) and issubclass(node, BaseModel):
            for name, field in node.model_fields.items():
                keys.add(field.alias or name)
    return sorted(keys)


def _bounded(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_utf8(raw: bytes, source: str) -> str:
    """The text of a file that must be UTF-8; ConfigError naming the line of the first bad byte otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); a TOML file must be UTF-8"
        ) from exc


def parse_config(text: str, source: str = "<config>") -> AppConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def load_config(path: str | Path) -> AppConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(decode_utf8(raw, str(path)), str(path))
