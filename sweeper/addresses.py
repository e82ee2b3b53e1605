"""Address facts shared by the configuration and the transport (imports nothing of ours)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Is this host this machine's loopback: `localhost`, or a loopback address
    (IPv6 bare or in brackets, an IPv4-mapped one included)?"""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is this host's loopback too (Python 3.11 says it is not).
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback
