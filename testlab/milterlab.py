"""authmilter instances for the lab: one per policy variant, each on its own socket and Postfix port.

A variant is a set of INI overrides on top of BASE. Add one to VARIANTS (or call Lab.variant() from a test
module) when a scenario needs another policy, e.g. {"spf": {"fail_action": "reject"}}; it gets its own smtpd
listener, so tests stay independent of each other's configuration.
"""

from __future__ import annotations

from pathlib import Path

from testlab.dnslab import UNBOUND_ADDRESS
from testlab.zonedata import MX_NAME

Overrides = dict[str, dict[str, str]]

# What every lab milter shares: the namespace's validating Unbound, and no trusted networks (we send from
# 127.0.0.x, which the defaults would exempt from every check).
BASE: Overrides = {
    "milter": {"authserv_id": MX_NAME, "socket_mode": "0666", "socket_group": ""},
    "dns": {"nameservers": UNBOUND_ADDRESS, "trust_ad": "auto", "timeout": "3", "message_deadline": "20"},
    "trust": {"networks": ""},
    "log": {"target": "stderr", "level": "info"},
}

VARIANTS: dict[str, Overrides] = {
    "default": {},
    "spf_reject": {"spf": {"fail_action": "reject"}},
}

FIRST_VARIANT_PORT = 2525  # "default" listens on port 25 as well


def config_text(socket_path: Path, overrides: Overrides) -> str:
    sections: Overrides = {name: dict(keys) for name, keys in BASE.items()}
    sections["milter"]["socket"] = f"unix:{socket_path}"
    for name, keys in overrides.items():
        sections.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in keys.items()]
        lines.append("")
    return "\n".join(lines)
