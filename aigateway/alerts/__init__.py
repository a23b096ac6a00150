"""Alerts: events worth a person's attention, posted to webhooks from the background
(outbox.py), never on the request path."""
