"""The `security` section: CurveZMQ keys of this process and the public keys it trusts.

Every process of a deployment reads the same config file, each on its own machine, so the
key files are named by path and each machine holds its own files at those paths:

- ``key``: this process's key pair, the secret file `stream keys generate NAME` writes
  (``NAME.key_secret``). It is the server key of what the process binds and the client key
  of what it connects to. A worker machine holds only a worker key, a camera machine only
  a capture key: no role holds a secret it does not use.
- ``trusted``: a folder of public keys (``*.key``); only their owners may connect to what
  this process binds (ZAP allow-list). The process's own public key is always trusted, so
  `stream run` of a whole deployment with one key pair works without copying it there.
- ``sink_key`` / ``capture_key``: the public keys of the servers this process connects to
  (a client must know its server's key: that is what stops a man in the middle). By
  default ``<trusted>/sink.key`` and ``<trusted>/capture.key``; ``sources[].capture_key``
  names one capture's own key.

Binding a non-loopback address without keys is refused at validation unless
``insecure: true`` says that this is meant (a closed lab network, a VPN).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from stream.config.base import Problem, Problems, Strict


class SecurityConfig(Strict):
    """CurveZMQ encryption and an allow-list of public keys on every link between hosts."""

    key: str | None = Field(
        default=None,
        min_length=1,
        description="This process's own secret key file (NAME.key_secret, from `stream keys "
        "generate NAME`); null = no CURVE (only loopback, ipc:// and inproc:// may be bound, "
        "unless insecure: true).",
    )
    trusted: str | None = Field(
        default=None,
        min_length=1,
        description="Folder of public key files (*.key) allowed to connect to what this "
        "process binds; read again when an unknown key knocks, so a new worker's key can be "
        "added without a restart. The process's own public key is always trusted.",
    )
    sink_key: str | None = Field(
        default=None,
        min_length=1,
        description="Public key file of the sink (captures and workers connect to it); "
        "null = <trusted>/sink.key.",
    )
    capture_key: str | None = Field(
        default=None,
        min_length=1,
        description="Public key file of the captures (workers connect to them); null = "
        "<trusted>/capture.key. sources[].capture_key overrides it for one capture.",
    )
    insecure: bool = Field(
        default=False,
        description="Allow binding non-loopback addresses without keys (plain text, anyone "
        "who reaches the ports may send or read). Only for closed networks.",
    )

    @property
    def enabled(self) -> bool:
        """Whether CURVE is on (a key is configured)."""
        return self.key is not None

    def server_key(self, role: str, override: str | None = None) -> Path:
        """The public key file of a server this process connects to.

        Args:
            role: ``sink`` or ``capture``.
            override: a per-endpoint key file (``sources[].capture_key``), if any.

        Raises:
            ValueError: neither the key nor ``trusted`` is configured.
        """
        named = override or (self.sink_key if role == "sink" else self.capture_key)
        if named is not None:
            return Path(named)
        if self.trusted is None:
            raise ValueError(f"security.{role}_key is needed (or security.trusted holding "
                             f"{role}.key) to connect to the {role}")
        return Path(self.trusted) / f"{role}.key"

    @model_validator(mode="after")
    def _key_needed(self) -> SecurityConfig:
        if self.key is None:
            named = [k for k in ("trusted", "sink_key", "capture_key")
                     if getattr(self, k) is not None]
            if named:
                raise Problems([Problem(
                    ("key",),
                    f"{', '.join(named)} given but no key: set security.key to this "
                    "process's secret key file (`stream keys generate NAME` writes one)",
                    None)])
        return self
