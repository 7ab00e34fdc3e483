"""The rules for single values of a configuration (SPEC §1): pure string checks.

Nothing here knows about YAML nodes or positions, so the validator and the fast
path (spookd.config.fast) judge a value by the same code.
"""

from __future__ import annotations

import difflib
import re

from spookd.naming import is_reserved_env_key

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"{DNS_LABEL}(\.{DNS_LABEL})*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]+")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ID = 63
#: What instance_id_problem accepts, in one expression (for the fast path).
VALID_INSTANCE_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID}}}")
MAX_NAME = 63
MAX_DNS_SUBDOMAIN = 253
# The kubelet checks "requests.<name>" as a qualified name (quota naming), so the
# domain may use at most 253 - len("requests.") characters.
_REQUESTS_PREFIX = "requests."
DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 24 * 3600.0
_TCP_TARGET = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")
_CDI_NAME = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+/[A-Za-z0-9][A-Za-z0-9_.-]*=[A-Za-z0-9][A-Za-z0-9_.:-]*"
)


def parse_int(text: str) -> int:
    """The value of a YAML 1.2 integer as ruamel.yaml's resolver tags it (``0x1F``, ``1_000``)."""
    body = text.replace("_", "")
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    if body[:2] in ("0x", "0X"):
        return sign * int(body[2:], 16)
    if body[:2] in ("0o", "0O"):
        return sign * int(body[2:], 8)
    if body[:2] in ("0b", "0B"):
        return sign * int(body[2:], 2)
    return sign * int(body, 10)


def suggest(key: str, allowed: tuple[str, ...]) -> str:
    """A "did you mean" hint for a near miss, else the list of allowed keys."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:
        close = [a for a in allowed if a.lower() == key.lower()]
    if close:
        return f"; did you mean `{close[0]}`?"
    return f"; expected one of: {', '.join(allowed)}"


def node_name_ok(host: str) -> bool:
    """Whether a lower-cased node name is a DNS subdomain."""
    return len(host) <= MAX_DNS_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(host) is not None


def instance_id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid instance ID, or None when it is."""
    if not value:
        return 'instanceID is empty; give each device a non-empty ID such as "0001"'
    if len(value) > MAX_ID:
        return f"instanceID is {len(value)} characters long; the kubelet allows at most {MAX_ID}"
    if not INSTANCE_ID.fullmatch(value):
        bad = sorted({c for c in value if not INSTANCE_ID.fullmatch(c)})
        return f"instanceID `{value}` contains {''.join(bad)!r}; use only letters, digits, `.`, `_` and `-`"
    return None


def env_key_problem(key: str) -> str | None:
    """Why ``key`` may not name a device's env variable, or None when it may."""
    if not ENV_KEY.fullmatch(key):
        return f"env name `{key}` must match [A-Za-z_][A-Za-z0-9_]*"
    if is_reserved_env_key(key):
        return (
            f"env name `{key}` is reserved: Spookd generates ID, TYPE, NUM_DEVICES and "
            "DEV<n>_* itself; rename it"
        )
    return None


def env_value_problem(value: str) -> str | None:
    """Why a string may not be an env value, or None when it may."""
    if "\x00" in value:
        return "env value contains a NUL character, which no environment variable can hold"
    return None


#: The most seats one device may have: each is a kubelet device ID (and, under
#: ``exclusive``, a Lease), so a typo like ``capacity: 100000000`` must not reach them.
MAX_CAPACITY = 1000


def capacity_problem(value: int) -> str | None:
    """Why ``value`` cannot be a device's capacity, or None when it can."""
    if not 1 <= value <= MAX_CAPACITY:
        return (
            f"capacity {value} is out of range: it is how many containers may hold the device "
            f"at once, a whole number from 1 to {MAX_CAPACITY}"
        )
    return None


def tcp_target_ok(target: str) -> bool:
    """Whether ``target`` is host:port with a port from 1 to 65535."""
    match = _TCP_TARGET.fullmatch(target)
    return match is not None and 1 <= int(match.group(2)) <= 65535


def absolute_path_ok(value: str) -> bool:
    """Whether ``value`` is an absolute path without NUL or ``..``."""
    return value.startswith("/") and "\x00" not in value and not any(p == ".." for p in value.split("/"))


def permissions_ok(permissions: str) -> bool:
    """Whether ``permissions`` is some of r, w and m, each at most once."""
    return (
        bool(permissions) and not set(permissions) - set("rwm") and len(set(permissions)) == len(permissions)
    )


def annotation_key_ok(key: str) -> bool:
    """Whether ``key`` is a qualified name, optionally with a DNS-subdomain prefix."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > MAX_DNS_SUBDOMAIN or not DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= MAX_NAME and QUALIFIED_NAME.fullmatch(name) is not None


def cdi_name_ok(value: str) -> bool:
    """Whether ``value`` is a fully qualified CDI device name (vendor.com/class=name)."""
    return _CDI_NAME.fullmatch(value) is not None


def extended_resource_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid extended resource name, or None when it is."""
    if "/" not in name:
        return "it needs a domain, like `example.com/widget`"
    if "kubernetes.io/" in name:
        return "the kubernetes.io namespace is reserved for Kubernetes; use your own domain"
    if name.startswith(_REQUESTS_PREFIX):
        return "names starting with `requests.` are reserved for quota; drop the prefix"
    domain, _, short = name.partition("/")
    if "/" in short:
        return "it may contain only one `/`, like `example.com/widget`"
    if (
        not domain
        or len(_REQUESTS_PREFIX + domain) > MAX_DNS_SUBDOMAIN
        or not DNS_SUBDOMAIN.fullmatch(domain)
    ):
        return f"the domain `{domain}` must be a lower-case DNS subdomain, like `example.com`"
    if not short or len(short) > MAX_NAME or not QUALIFIED_NAME.fullmatch(short):
        return (
            f"the name `{short}` must be 1-{MAX_NAME} characters of letters, digits, "
            "`-`, `_` and `.`, starting and ending with a letter or digit"
        )
    return None
