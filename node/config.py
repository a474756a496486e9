"""The node's one typed settings object: TOML file + environment overrides, validated at start-up.

Why pydantic: every key is checked once, with the failing key named in the error, and the
rest of the code receives a frozen object instead of reading files or the environment.

Environment overrides: ``TRIAGE_NODE__<SECTION>__<KEY>=value`` (double underscores, any case),
e.g. ``TRIAGE_NODE__DICOM__PORT=11113`` or ``TRIAGE_NODE__DICOM__ALLOWED_PEERS='["*"]'``.
Values are read as TOML literals when they parse (numbers, booleans, arrays, quoted
strings) and as plain strings otherwise. Nested tables use more parts:
``TRIAGE_NODE__DICOM__TLS__ENABLED=true``.

Relative paths are resolved against the working directory of the process.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "TRIAGE_NODE__"


# the triage profiles that ship with the package (config/profiles in a checkout links here)
DEFAULT_PROFILES_DIR = Path(__file__).resolve().parent / "triage" / "default_profiles"


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator (names the key, no traceback)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Role = Literal["receive", "http", "stability", "triage", "forward"]
ALL_ROLES: tuple[str, ...] = ("receive", "http", "stability", "triage", "forward")


class NodeSection(_Section):
    data_dir: Path = Path("./data")  # per process: its run marker and caches (not shared)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # What this process does; several processes (on several hosts) split the roles and share one
    # PostgreSQL and one storage path. A receive-only process never imports torch; a process
    # without "receive" opens no DICOM port.
    roles: tuple[Role, ...] = ALL_ROLES  # type: ignore[assignment]
    # Names this process's temp files in the shared storage/.incoming (so that a restart clears
    # only its own); default: host name + a hash of the absolute data_dir (stable across restarts).
    instance_id: str | None = None

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one role is needed (receive, http, stability, triage, forward)")
        if len(set(value)) != len(value):
            raise ValueError("a role is listed twice")
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError("1-64 characters of A-Z a-z 0-9 _ . -")
        return value

    def has(self, role: str) -> bool:
        return role in self.roles

    def process_id(self) -> str:
        """This process's stable name: ``instance_id``, or host name + hash of the data_dir."""
        if self.instance_id:
            return self.instance_id
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
        digest = hashlib.sha1(str(Path(self.data_dir).resolve()).encode()).hexdigest()[:8]
        return f"{host}-{digest}"


class TlsSection(_Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # when set, client certificates signed by it are required
    handshake_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _files(self) -> TlsSection:
        if self.enabled:
            if self.cert_file is None or self.key_file is None:
                raise ValueError("cert_file and key_file are required when enabled = true")
            for key in ("cert_file", "key_file", "ca_file"):
                path = getattr(self, key)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{key} {path} does not exist")
        return self


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not 0 < len(stripped) <= 16 or "\\" in stripped or not stripped.isascii():
        raise ValueError(f"{value!r} is not a DICOM AE title (1-16 ASCII characters, no backslash)")
    return stripped


class DicomSection(_Section):
    ae_title: str = "TRIAGE_NODE"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    # Calling AE titles allowed to associate: [] = nobody, ["*"] = anyone.
    allowed_peers: tuple[str, ...] = ("MODALITY1",)
    check_called_ae: bool = True
    max_associations: int = Field(default=16, ge=1)
    # Largest P-DATA PDU we accept; 0 = unlimited. Large PDUs cut per-PDU overhead in Python.
    max_pdu_bytes: int = Field(default=1_048_576, ge=0)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    network_timeout_seconds: float = Field(default=120.0, gt=0)
    # From accept to a complete A-ASSOCIATE-RQ (TLS handshake included); also the deadline of
    # every later PDU from its first byte is network_timeout_seconds.
    handshake_timeout_seconds: float = Field(default=10.0, gt=0)
    # Connections still negotiating (no thread, no slot); when full, the oldest is dropped.
    max_pending_connections: int = Field(default=64, ge=1)
    tcp_nodelay: bool = True
    tls: TlsSection = TlsSection()

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v if v == "*" else _check_ae_title(v) for v in value)


class StorageSection(_Section):
    path: Path = Path("./data/storage")
    fsync: bool = True  # off only for throw-away benchmarks; rule 1 needs it on
    max_dataset_bytes: int = Field(default=2 * 1024**3, gt=0)
    min_free_bytes: int = Field(default=1024**3, ge=0)  # below it: 0xA700, nothing written


class DatabaseSection(_Section):
    url: str = "sqlite:///./data/index.db"
    echo: bool = False
    # SQLite only. "full": every commit is synced before Success. "normal" (WAL): the commit
    # that follows the file's own fsync is not synced; after a power loss the last rows may be
    # missing, and the start after an unclean stop re-indexes every file without a row (the files
    # are durable), so a stored instance is still indexed before the node accepts anything again.
    sqlite_synchronous: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value


class StabilitySection(_Section):
    quiet_seconds: float = Field(default=10.0, ge=0)
    tick_seconds: float = Field(default=1.0, gt=0)


class AuditSection(_Section):
    path: Path = Path("./data/audit.jsonl")
    fsync: bool = True
    source_id: str = "triage-node"
    # Other processes' audit files that `audit verify` checks besides those named in the
    # database's audit_head table (e.g. a per-host file mounted here read-only).
    verify_paths: tuple[Path, ...] = ()


class ModelSection(_Section):
    """Where MedSigLIP comes from and how it runs; node.triage.model.load_model takes it as it is."""

    id: str = "google/medsiglip-448"
    path: str | None = None  # a local checkpoint folder; wins over id
    revision: str | None = None
    device: Literal["auto", "cuda", "cpu"] | str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=32, ge=1)
    offline: bool = False
    hf_token_env: str = "HF_TOKEN"
    timeout_seconds: float = Field(default=120.0, gt=0)  # deadline for one inference call (the worker's)
    retry_load_seconds: float = Field(default=300.0, gt=0)  # how often a failed load is retried


class TriageSection(_Section):
    enabled: bool = True
    # None: the profiles shipped inside the package (node/triage/default_profiles), found from any
    # working directory; a folder of your own (e.g. tuned by `triage-node profile tune`) wins.
    profiles_dir: Path | None = None
    profiles: tuple[str, ...] = ("cxr",)  # in order of preference
    poll_seconds: float = Field(default=1.0, gt=0)
    max_jobs_per_batch: int = Field(default=8, ge=1)
    # The lease of a running job: a job whose heartbeat is older than this is retaken by any
    # worker (its process died). The worker heartbeats every heartbeat_seconds while it works.
    stale_job_seconds: float = Field(default=600.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)

    @property
    def profiles_path(self) -> Path:
        """The folder the profiles are read from (the configured one, else the packaged defaults)."""
        return Path(self.profiles_dir) if self.profiles_dir is not None else DEFAULT_PROFILES_DIR

    @model_validator(mode="after")
    def _lease(self) -> TriageSection:
        if self.heartbeat_seconds >= self.stale_job_seconds:
            raise ValueError("heartbeat_seconds must be shorter than stale_job_seconds (the lease)")
        return self


class RemoteTls(_Section):
    enabled: bool = False
    ca_file: Path | None = None  # verify the peer against this CA
    cert_file: Path | None = None  # our client certificate, when the peer asks for one
    key_file: Path | None = None


class RemoteNode(_Section):
    """A DICOM peer we connect to: a C-MOVE destination or a forwarding target."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None  # our AE title towards it (default dicom.ae_title)
    tls: RemoteTls = RemoteTls()

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)


SendKind = Literal["sr", "sc", "pdf", "study"]
#: What the old single values of ``send`` mean as a list.
LEGACY_SEND = {"sr": ("sr",), "study": ("study",), "both": ("sr", "study")}


class ForwardDestination(RemoteNode):
    """A PACS that gets, per result, the outputs named in ``send``: the SR, the summary card
    (Secondary Capture), its encapsulated PDF, and/or the study's other instances."""

    send: tuple[SendKind, ...] = ("sr",)

    @field_validator("send", mode="before")
    @classmethod
    def _send(cls, value: Any) -> Any:
        if isinstance(value, str):  # "sr" | "study" | "both", as before lists existed
            if value not in LEGACY_SEND:
                raise ValueError(f"{value!r} is not one of sr, sc, pdf, study (or the old single value both)")
            return LEGACY_SEND[value]
        return value

    @field_validator("send")
    @classmethod
    def _send_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("send must name at least one of sr, sc, pdf, study")
        return tuple(dict.fromkeys(value))


class Hl7Destination(_Section):
    """A RIS that hears about results by HL7 v2 over MLLP: one ORU^R01 per SR and, with
    ``priority_update``, an ORM^O01 order change raising the order's priority when the result is HIGH."""

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "TRIAGE_NODE"
    sending_facility: str = ""
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    priority_update: bool = False
    timeout_seconds: float = Field(default=30.0, gt=0)  # connect, send, wait for the ACK


class FhirDestination(_Section):
    """A FHIR server that gets a transaction Bundle (DiagnosticReport + one Observation per finding)."""

    url: str  # the FHIR base URL; the Bundle is POSTed to it
    token: str | None = None  # bearer token; or name an environment variable in token_env
    token_env: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/")


class ResultsSection(_Section):
    """Optional outputs besides the SR. A [[forward]] destination that sends "sc" or "pdf"
    turns the matching output on by itself."""

    summary_card: bool = False  # Secondary Capture image per result
    summary_pdf: bool = False  # Encapsulated PDF of the same content


class ForwardingSection(_Section):
    """Retry policy of the durable outbox (applies to every [[forward]] destination)."""

    initial_backoff_seconds: float = Field(default=5.0, gt=0)
    max_backoff_seconds: float = Field(default=600.0, gt=0)
    max_age_seconds: float = Field(default=86400.0, gt=0)  # then: dead letter
    timeout_seconds: float = Field(default=30.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    # A claimed outbox row is leased this long (renewed while its batch is sent); a row whose
    # process died becomes due again when the lease ends. Unset: 4 x timeout + 2 s per row, >= 60 s.
    lease_seconds: float | None = Field(default=None, gt=0)


class HttpSection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: str | None = None  # bearer token for every endpoint but /healthz; None = open (not for production)
    max_body_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Browser origins allowed to call DICOMweb (CORS), e.g. an OHIF served elsewhere; [] = none, ["*"] any.
    cors_origins: tuple[str, ...] = ()


class SearchSection(_Section):
    """Search by text or by example over the kept embeddings (node/search)."""

    exact_max: int = Field(default=20_000, ge=0)  # up to this many vectors: exact numpy search; beyond: FAISS IVF
    nprobe: int | None = Field(default=None, ge=1)  # IVF cells visited per query; unset = max(16, nlist / 32)
    refresh_seconds: float = Field(default=10.0, gt=0)  # how often the node adds newly kept embeddings
    max_limit: int = Field(default=1000, ge=1)  # largest `limit` a query may ask for


class DriftSection(_Section):
    """Drift watch per stream (modality, manufacturer, model, station) (node/drift)."""

    enabled: bool = True
    interval_seconds: float = Field(default=300.0, gt=0)  # background computation schedule
    reference_size: int = Field(default=200, ge=10)  # first N embedded images of a stream (unless frozen)
    recent_size: int = Field(default=100, ge=10)  # last M images compared with the reference
    min_recent: int = Field(default=20, ge=5)  # fewer recent images: no test, no alert
    alpha: float = Field(default=0.01, gt=0, lt=1)  # family-wise alarm level per stream (Bonferroni over tests)
    permutations: int = Field(default=1000, ge=50)  # MMD permutation test (raised to 4 / (alpha / 2) if fewer)
    pca_components: int = Field(default=10, ge=1)


class Settings(_Section):
    """All of the node's configuration, one section per part of the flow."""

    node: NodeSection = NodeSection()
    dicom: DicomSection = DicomSection()
    storage: StorageSection = StorageSection()
    database: DatabaseSection = DatabaseSection()
    stability: StabilitySection = StabilitySection()
    audit: AuditSection = AuditSection()
    model: ModelSection = ModelSection()
    triage: TriageSection = TriageSection()
    http: HttpSection = HttpSection()
    search: SearchSection = SearchSection()
    drift: DriftSection = DriftSection()
    forward: tuple[ForwardDestination, ...] = ()
    results: ResultsSection = ResultsSection()
    hl7: tuple[Hl7Destination, ...] = ()
    fhir: tuple[FhirDestination, ...] = ()
    forwarding: ForwardingSection = ForwardingSection()
    move_destinations: tuple[RemoteNode, ...] = ()  # C-MOVE targets besides the [[forward]] ones
    source: str = "<defaults>"  # where the settings came from, for the audit log


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, str]:
    """Apply ``TRIAGE_NODE__*`` overrides; returns dotted key -> the variable that set it."""
    applied: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"environment variable {name}: {'.'.join(parts[:-1])} is not a table")
        target[parts[-1]] = _parse_env_value(raw)
        applied[".".join(parts)] = name
    return applied


def _describe(error: ValidationError, from_env: dict[str, str] | None = None) -> str:
    """One line per problem, naming the key and, when an environment variable set it, the variable."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        variable = next(
            (name for dotted, name in (from_env or {}).items() if key == dotted or key.startswith(dotted + ".")), None
        )
        lines.append(f"  {key}: {msg}" + (f" (set by environment variable {variable})" if variable else ""))
    return "\n".join(lines)


def load_settings(path: Path | str | None, environ: dict[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML), apply ``TRIAGE_NODE__*`` overrides, validate, return frozen Settings."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    from_env = _apply_env(data, dict(os.environ if environ is None else environ))
    data["source"] = source
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {source}:\n{_describe(exc, from_env)}") from None
