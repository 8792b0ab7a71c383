"""The ARC check's result, with the result protocol (checkresults.MethodResult)."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.checks.arc.aar import HopAuth
from authmilter.results import AREntry, Dnssec, Property, Status, weakest


@dataclass(frozen=True, slots=True)
class ArcHop:
    """One ARC set as the chain names it (d= and s= only from fields that parsed; `""` otherwise)."""

    instance: int
    seal_domain: str = ""
    seal_selector: str = ""
    ams_domain: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    status: Status                          # pass, fail, none, temperror (RFC 8617 §5.2 and RFC 8601 §2.7)
    reason: str = ""                        # why not pass (or none)
    hops: tuple[ArcHop, ...] = ()           # the chain, instance 1 first (for a chain whose structure parsed)
    remote_ip: str = ""                     # the client we received it from: smtp.remote-ip (RFC 8617 §10.1)
    key_dnssec: tuple[Dnssec, ...] = ()     # of every key lookup made
    newest_auth: HopAuth | None = None      # what the newest hop's AAR recorded (a passing chain only)

    @property
    def newest(self) -> ArcHop | None:
        return self.hops[-1] if self.hops else None

    def override_comment(self) -> str:
        """RFC 8617 §7.2.2's local_policy comment naming the hop an override trusted: arc=pass as[N].d=D
        remote-ip[N]=IP (the IP that hop recorded)."""
        hop = self.newest
        if hop is None:
            return ""
        ip = self.newest_auth.remote_ip if self.newest_auth is not None else ""
        text = f"arc=pass as[{hop.instance}].d={hop.seal_domain}"
        return f"{text} remote-ip[{hop.instance}]={ip}" if ip else text

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        return self.key_dnssec

    def _comment(self) -> str:
        parts = []
        if self.status is Status.PASS:
            # As authentication_milter writes it: each seal (newest first), and the newest message signature.
            newest = self.hops[-1]
            verified = [f"as.{hop.instance}.{hop.seal_domain}=pass" for hop in reversed(self.hops)]
            verified.insert(1, f"ams.{newest.instance}.{newest.ams_domain}=pass")
            parts.append(", ".join(verified))
        elif self.status is Status.NONE:
            parts.append("no ARC sets")
        elif self.reason:
            parts.append(self.reason)
        if self.key_dnssec:
            parts.append(f"dnssec={weakest(*self.key_dnssec)}")
        return "; ".join(parts)

    def ar_entries(self) -> tuple[AREntry, ...]:
        properties = (Property("smtp", "remote-ip", self.remote_ip),) if self.remote_ip else ()
        return (AREntry("arc", str(self.status), self._comment() or None, properties),)

    def log_fields(self) -> dict[str, str]:
        fields = {"arc": str(self.status)}
        if self.hops:
            fields["arc_i"] = str(self.hops[-1].instance)
            fields["arc_d"] = self.hops[-1].seal_domain or "-"
        if self.newest_auth is not None and self.newest_auth.remote_ip:
            fields["arc_hop_ip"] = self.newest_auth.remote_ip  # the client the newest sealer recorded
        return fields
