"""A private Postfix instance: its own config directory, queue and mailbox, one smtpd per milter variant.

Mail for RECIPIENT_DOMAIN goes through virtual(8) into one Maildir (DIR/mail/inbox/), found again by queue id.
Postfix logs to DIR/log/maillog through postlogd, so tests can read what it did.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from testlab.zonedata import MX_NAME, RECIPIENT_DOMAIN

DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
SMTP_PORT = 25              # the default variant
NO_MILTER_PORT = 2499       # the same Postfix without any milter (below the variants' 2525+ range)
MAILBOX_UID = 65534         # virtual(8) refuses to deliver as root; nobody owns the test mailbox


def available() -> str:
    if not (DAEMON_DIRECTORY / "master").exists():
        return "Postfix is not installed (Debian package postfix)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist"
    return ""


def main_cf(directory: Path) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": directory / "spool",
        "data_directory": directory / "data",
        "mail_owner": "postfix",
        "myhostname": MX_NAME,
        "mydomain": RECIPIENT_DOMAIN,
        "myorigin": "$myhostname",
        "mydestination": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "all",
        "mynetworks": "127.0.0.1/32",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "virtual_mailbox_domains": RECIPIENT_DOMAIN,
        "virtual_mailbox_base": directory / "mail",
        "virtual_mailbox_maps": "static:inbox/",  # trailing slash: Maildir
        "virtual_uid_maps": f"static:{MAILBOX_UID}",
        "virtual_gid_maps": f"static:{MAILBOX_UID}",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "smtputf8_enable": "yes",
        "biff": "no",
        "maillog_file": directory / "log" / "maillog",
        "maillog_file_prefixes": directory,  # Postfix refuses log files outside /var unless told
        "milter_default_action": "tempfail",
        "milter_protocol": "6",
        "milter_connect_timeout": "10s",
        "smtpd_milters": "",
        "non_smtpd_milters": "",
        # Delivery should be immediate; nothing here is worth waiting for.
        "in_flow_delay": "0",
        "delay_warning_time": "0",
        "smtpd_error_sleep_time": "0",
        "smtpd_soft_error_limit": "1000",
        "smtpd_hard_error_limit": "1000",
        "smtpd_client_connection_rate_limit": "0",
        "anvil_rate_time_unit": "60s",
        "notify_classes": "",
        "bounce_queue_lifetime": "0",
        "maximal_queue_lifetime": "0",
    }
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


def master_cf(smtpd_listeners: dict[int, str]) -> str:
    """smtpd_listeners: port -> smtpd_milters value for that port ("" = no milter)."""
    rows = []
    for port, milters in sorted(smtpd_listeners.items()):
        service = "smtp" if port == 25 else str(port)
        rows.append(f"{service} inet n - n - - smtpd -o smtpd_milters={milters}")
    rows += [
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "local unix - n n - - local",
        "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(rows) + "\n"


def prepare(directory: Path, smtpd_listeners: dict[int, str]) -> Path:
    """Write the configuration and the directories Postfix expects; return the config directory."""
    config = directory / "etc"
    config.mkdir(parents=True)
    (config / "main.cf").write_text(main_cf(directory))
    (config / "master.cf").write_text(master_cf(smtpd_listeners))
    # postfix-script checks these files against postfix-files; the packaged copy describes the layout we use.
    for name in ("postfix-files", "dynamicmaps.cf"):
        if Path("/etc/postfix", name).exists():
            shutil.copy(Path("/etc/postfix", name), config / name)
    for sub in ("spool", "data", "log"):
        (directory / sub).mkdir()
    postfix = pwd.getpwnam("postfix")
    os.chown(directory / "data", postfix.pw_uid, postfix.pw_gid)
    mail = directory / "mail"
    mail.mkdir()
    os.chown(mail, MAILBOX_UID, MAILBOX_UID)
    return config
