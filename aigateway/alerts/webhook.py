"""What a webhook receives: the alert as JSON (or Slack's `{"text": ...}`), signed with
an HMAC-SHA256 over the send time and the body, as Stripe and GitHub sign theirs."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from ..records import Alert

SIGNATURE_HEADER = "X-Aigateway-Signature"
# The alert's id (kind|subject|period): the same on every try, so a receiver can drop a
# repeat (a gateway that died between posting and noting it posts again).
EVENT_HEADER = "X-Aigateway-Event"
FORMATS = ("json", "slack")


def stored_body(alert: Alert, at: float) -> str:
    """The alert as the outbox keeps it, and as the `json` form sends it."""
    document = {
        "id": alert.dedupe,
        "kind": alert.kind,
        "subject": alert.subject,
        "period": alert.period,
        "at": round(at, 3),
        "text": alert.text,
        "details": dict(alert.details),
    }
    return orjson.dumps(document).decode()


def webhook_body(stored: str, form: str) -> bytes:
    """The bytes posted: the stored JSON as it is, or Slack's form of its text."""
    if form == "slack":
        return orjson.dumps({"text": "aigateway: " + slack_escaped(orjson.loads(stored)["text"])})
    return stored.encode()


def slack_escaped(text: str) -> str:
    """Text as Slack's markup shows it literally: a name or an upstream's error holding
    `<!channel>` or `<https://...|click>` pings no one and links nowhere."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=TIMESTAMP,v1=HEX`: HEX is the HMAC-SHA256 of `TIMESTAMP.BODY` keyed by `secret`.
    The time is signed too, so a receiver can refuse an old alert posted again."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"
