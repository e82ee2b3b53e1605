"""Host checks of the configuration: host names, whether this machine can listen
(loopback: `sweeper.addresses`, which the transport shares)."""

from __future__ import annotations

import ipaddress
import re
import socket

#: A DNS host name (RFC 1123 labels, an optional root dot) or an IPv4 address.
HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)


def is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def unbindable(host: str) -> str | None:
    """Why the ops server could not listen on this host, or None: a name that does not
    resolve, or an address that is not this machine's, fails at every start (exit 75, a
    restart loop), so check-config refuses it. Tried on port 0: the port itself may be
    busy for a moment, which a restart fixes; this never does."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return f"{host[:64]!r} does not resolve on this host"
    errors: list[str] = []
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0, *address[2:]))
        except OSError as exc:
            errors.append(exc.strerror or type(exc).__name__)
            continue
        return None
    return f"cannot listen on {host[:64]!r}: {errors[0] if errors else 'no address'}"
