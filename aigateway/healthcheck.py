"""`python -m aigateway.healthcheck`: exit 0 when the gateway on this machine answers
/health with 200, else 1 (Docker's HEALTHCHECK, a systemd watchdog, a load balancer's
script). It reads the same settings as the server (environment, then .env), so it asks
the right port, over HTTPS when TLS_CERT_FILE is set (without checking the certificate:
it talks to this machine's own gateway)."""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from .settings import Settings, SettingsError


def check(settings: Settings, timeout: float = 4.0) -> tuple[bool, str]:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"{settings.scheme}://{host}:{settings.port}/health"
    context = None
    if settings.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status == 200, f"{url}: {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', None) or exc}"


def main() -> None:
    try:
        healthy, said = check(Settings.from_env())
    except SettingsError as exc:
        healthy, said = False, str(exc)
    print(said)
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()
