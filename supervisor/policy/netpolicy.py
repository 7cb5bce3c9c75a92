"""Network by domain: host patterns, the allow/deny decision for one ``host:port``, and the hints.

Pure: no sockets, no threads. The proxy (``nono_supervisor.netproxy``) and the notify layer's inet rule
(``nono_supervisor.linux.sockets``) decide with it; ``policy`` validates profile entries and flags with it.

A pattern is ``host`` (that host only), ``*.example.com`` (its subdomains, not ``example.com`` itself), an
IPv4 or IPv6 address (``127.0.0.1``, ``[::1]``), optionally with ``:PORT`` (only that port). Names are
compared lowercased, without a trailing dot, IDNA-encoded. The most specific matching pattern wins (an
exact name beats a wildcard, a longer wildcard a shorter one, a pattern with a port one without); on a tie
the deny wins.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nono_supervisor.errors import UsageError

__all__ = [
    "NET_MODES",
    "Pattern",
    "Verdict",
    "parse_pattern",
    "normalize_host",
    "split_authority",
    "decide",
    "network_hint",
    "NOT_ALLOWED",
    "DIRECT",
    "RAW_DNS",
    "DOMAINS_ONLY",
    "LOCAL_ADDRESS",
    "DENIED_PATTERN",
]

NET_MODES = ("open", "domains", "block")

# The rules a domains-mode denial names (the ``[rule]`` of its report line, the audit log's ``rule``).
NOT_ALLOWED = "domain not allowed"
DENIED_PATTERN = "denied domain "  # + the pattern that matched
DIRECT = "direct connection, not through the proxy"
RAW_DNS = "raw DNS: the proxy resolves names"
DOMAINS_ONLY = "network mode domains"  # UDP, raw, MPTCP, fast open, bind and listen: as under --net-block
LOCAL_ADDRESS = "resolves to a local address "  # + the address (DNS rebinding guard)
UNATTRIBUTED = "not a sandboxed command's connection"

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Pattern:
    host: str  # normalized name, or an address in its canonical text form (IPv6 without brackets)
    wildcard: bool  # "*.host": strict subdomains of host
    port: int | None
    source: str  # "--allow-domain", "group:pypi", "profile built-in default", "user", "grant-store"

    @property
    def address(self) -> bool:
        return _address(self.host) is not None

    def text(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = f"*.{host}" if self.wildcard else host
        return f"{host}:{self.port}" if self.port is not None else host

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def specificity(self) -> tuple[int, int, int]:
        return (0 if self.wildcard else 1, self.host.count(".") + 1, self.port is not None)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str  # the allowing pattern's source, or NOT_ALLOWED / DENIED_PATTERN + pattern
    pattern: Pattern | None = None


def _address(text: str) -> str | None:
    """An address in canonical text form (a v4-mapped IPv6 address as the IPv4 one), else None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def normalize_host(raw: str) -> str | None:
    """A host as sent by a client (``Example.COM.``, ``[::1]``, ``bücher.de``) in the form patterns hold,
    or None when it is not a host name or address."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        return _address(host[1:-1]) if ":" in host else None
    address = _address(host)
    if address is not None:
        return address
    host = host.rstrip(".").lower() if host not in ("", ".") else ""
    if not host:
        return None
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return None
    return host


def split_authority(text: str, default_port: int | None = None) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) -> (normalized host, port); None when malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        return None  # a bare IPv6 address has no room for a port
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            return None
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        return None
    normalized = normalize_host(host)
    return None if normalized is None else (normalized, port)


def parse_pattern(raw: object, source: str, where: str) -> Pattern:
    """A pattern as written in a profile or on the command line; a UsageError naming ``where`` if not."""
    if not isinstance(raw, str) or not raw.strip():
        raise UsageError(f"{where}: expected a host pattern, got {raw!r}")
    text = raw.strip()
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    port: int | None = None
    if body.startswith("["):
        parsed = split_authority(body, default_port=0)
        if parsed is None:
            raise UsageError(f"{where}: {raw!r} is not a host pattern")
        host, port = parsed[0], parsed[1] or None
    elif body.count(":") > 1:  # a bare IPv6 address, no port
        host = _address(body) or ""
    else:
        name, _, port_text = body.partition(":")
        if port_text:
            if not (port_text.isdigit() and 0 < int(port_text) < 65536):
                raise UsageError(f"{where}: {raw!r}: the port must be 1-65535")
            port = int(port_text)
        host = normalize_host(name) or ""
    if not host or "*" in body:
        raise UsageError(
            f"{where}: {raw!r} is not a host pattern (a name, *.name for its subdomains, or an address;"
            " optionally :PORT)"
        )
    if wildcard and _address(host) is not None:
        raise UsageError(f"{where}: {raw!r}: an address cannot have subdomains")
    return Pattern(host, wildcard, port, source)


def decide(host: str, port: int, allow: Iterable[Pattern], deny: Iterable[Pattern]) -> Verdict:
    """Whether ``host:port`` (normalized) may be reached: the most specific matching pattern decides; a
    deny wins a tie; nothing matching is ``NOT_ALLOWED``."""
    best_allow = max((p for p in allow if p.matches(host, port)), key=Pattern.specificity, default=None)
    best_deny = max((p for p in deny if p.matches(host, port)), key=Pattern.specificity, default=None)
    if best_deny is not None and (best_allow is None or best_deny.specificity() >= best_allow.specificity()):
        return Verdict(False, DENIED_PATTERN + best_deny.text(), best_deny)
    if best_allow is None:
        return Verdict(False, NOT_ALLOWED)
    return Verdict(True, best_allow.source, best_allow)


def _host_of(display: str) -> str:
    """``api.example.com:443`` -> ``api.example.com``; ``[::1]:80`` -> ``[::1]``."""
    if display.startswith("["):
        return display[: display.find("]") + 1]
    return display.rsplit(":", 1)[0] if display.count(":") == 1 else display


def network_hint(display: str, rule: str) -> str | None:
    """The end of a denial line for a rule of domains mode (``; to allow: FLAG``, or ``""`` where no flag
    makes it succeed); None for every other rule. Each flag named, passed, makes the connection succeed."""
    if rule in (NOT_ALLOWED, DIRECT):
        return f"; to allow: --allow-domain {_host_of(display)}"
    if rule.startswith(DENIED_PATTERN):
        # An exact name beats a wildcard deny; an exact deny is the user's own no: no flag undoes it.
        wildcard = rule[len(DENIED_PATTERN) :].startswith("*.")
        return f"; to allow: --allow-domain {_host_of(display)}" if wildcard else ""
    if rule.startswith(LOCAL_ADDRESS):
        address = rule[len(LOCAL_ADDRESS) :]
        return f"; to allow: --allow-domain {f'[{address}]' if ':' in address else address}"
    if rule in (RAW_DNS, DOMAINS_ONLY):
        return "; to allow: --net-mode open"
    if rule == UNATTRIBUTED:
        return ""
    return None
