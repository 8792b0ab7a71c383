"""SMTP client run inside the lab's namespace: `python smtpsend.py < request.json`, prints one JSON result.

Request: {"host", "port", "source", "helo", "mail_from", "rcpts": [...], "data_b64", "mail_params": "",
"ehlo": true}. MAIL FROM and RCPT TO are sent exactly as given between the angle brackets (smtplib would
re-quote them), so tests can send what an attacker would. The reply to every stage is recorded; the client stops
at the first stage a real client would give up at, like a real client.

Result: {"stages": [{"stage", "code", "text"}...], "accepted": bool, "queue_id": str | null}.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import sys

QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


def send(request: dict) -> dict:
    stages: list[dict] = []

    def record(stage: str, code: int, text: bytes | str) -> int:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        stages.append({"stage": stage, "code": code, "text": text})
        return code

    result = {"stages": stages, "accepted": False, "queue_id": None}
    client = smtplib.SMTP(timeout=120, source_address=(request["source"], 0))
    if "SMTPUTF8" in request.get("mail_params", "").upper():
        client.command_encoding = "utf-8"  # RFC 6531: UTF-8 envelope addresses once SMTPUTF8 is asked for
    try:
        if record("connect", *client.connect(request["host"], request["port"])) != 220:
            return result
        greet = client.ehlo if request.get("ehlo", True) else client.helo
        if record("helo", *greet(request["helo"])) != 250:
            return result
        params = request.get("mail_params", "")
        if record("mail", *client.docmd("MAIL", f"FROM:<{request['mail_from']}>{params}")) != 250:
            return result
        accepted = 0
        for rcpt in request["rcpts"]:
            if record("rcpt", *client.docmd("RCPT", f"TO:<{rcpt}>")) in (250, 251):
                accepted += 1
        if not accepted:
            return result
        if record("data", *client.docmd("DATA")) != 354:
            return result
        data = base64.b64decode(request["data_b64"])
        data = re.sub(rb"(?<!\r)\n", b"\r\n", data)           # SMTP wants CRLF everywhere
        data = re.sub(rb"(?m)^\.", b"..", data)                # dot-stuffing (RFC 5321 §4.5.2)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        client.send(data + b".\r\n")
        code, text = client.getreply()
        record("eom", code, text)
        if code == 250:
            result["accepted"] = True
            found = QUEUED.search(text.decode("utf-8", "replace"))
            result["queue_id"] = found.group(1) if found else None
        try:
            client.docmd("QUIT")
        except smtplib.SMTPException:
            pass
        return result
    except (OSError, smtplib.SMTPException) as exc:
        stages.append({"stage": "error", "code": 0, "text": f"{type(exc).__name__}: {exc}"})
        return result
    finally:
        client.close()


if __name__ == "__main__":
    print(json.dumps(send(json.load(sys.stdin))))
