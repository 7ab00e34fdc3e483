"""Names derived from resource names: plugin socket files and the environment scheme.

Pure functions: no I/O, no event loop.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping

#: ``sun_path`` holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

_SOCKET_PREFIX = "spookd-"
_SOCKET_SUFFIX = ".sock"
_HASH_CHARS = 8


class SocketPathError(ValueError):
    """The plugin directory is too long to hold any socket name."""


def plain_socket_name(resource_name: str) -> str:
    """The socket file name of a resource before collision and length handling."""
    body = resource_name.lower().replace(".", "").replace("/", "_")
    return f"{_SOCKET_PREFIX}{body}{_SOCKET_SUFFIX}"


def _hashed_socket_name(resource_name: str, room: int, hash_chars: int) -> str:
    digest = hashlib.sha256(resource_name.encode()).hexdigest()[:hash_chars]
    body = plain_socket_name(resource_name)[len(_SOCKET_PREFIX) : -len(_SOCKET_SUFFIX)]
    fixed = len(_SOCKET_PREFIX) + 1 + hash_chars + len(_SOCKET_SUFFIX)
    keep = max(0, room - fixed)
    body = body.encode()[:keep].decode(errors="ignore")
    return f"{_SOCKET_PREFIX}{body}-{digest}{_SOCKET_SUFFIX}"


def assign_socket_names(
    resource_names: Iterable[str],
    plugin_dir: str,
    existing: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Give every resource a distinct socket file name that fits the Unix path limit.

    A resource that already has a name in ``existing`` keeps it, so a running server
    never changes sockets because another resource was added. Otherwise the plain
    name is used unless it is taken or too long, in which case a stable hash of the
    resource name is appended.
    """
    room = MAX_SOCKET_PATH_BYTES - len(plugin_dir.rstrip("/").encode()) - 1
    minimum = len(_SOCKET_PREFIX) + 1 + _HASH_CHARS + len(_SOCKET_SUFFIX)
    if room < minimum:
        raise SocketPathError(
            f"plugin directory {plugin_dir!r} is too long for Unix socket paths "
            f"({MAX_SOCKET_PATH_BYTES} bytes); use a shorter --plugin-dir"
        )
    wanted = sorted(set(resource_names))
    names: dict[str, str] = {}
    taken: set[str] = set()
    for resource in wanted:
        if existing and resource in existing:
            names[resource] = existing[resource]
            taken.add(existing[resource])
    plain = {r: plain_socket_name(r) for r in wanted if r not in names}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    for resource, name in plain.items():
        if counts[name] == 1 and name not in taken and len(name.encode()) <= room:
            names[resource] = name
            taken.add(name)
    for resource in wanted:
        if resource in names:
            continue
        hash_chars = _HASH_CHARS
        name = _hashed_socket_name(resource, room, hash_chars)
        while name in taken:
            hash_chars += 4
            name = _hashed_socket_name(resource, room, hash_chars)
        names[resource] = name
        taken.add(name)
    return names


# -- the environment scheme (SPEC §5) -------------------------------------------
#
# A container given devices d0..dn-1 of a resource with prefix P gets P_DEV<i>_ID,
# P_DEV<i>_TYPE and P_DEV<i>_<KEY> for each, the same without DEV<i>_ for d0, and
# P_NUM_DEVICES. Allocate builds these names; validation refuses env keys that would
# collide with them. Both read the scheme from here.

ID_KEY = "ID"
TYPE_KEY = "TYPE"
COUNT_KEY = "NUM_DEVICES"
#: Env keys Spookd generates itself; a device's own env may not use them.
RESERVED_ENV_KEYS = frozenset({ID_KEY, TYPE_KEY, COUNT_KEY})
_NUMBERED_KEY = re.compile(r"DEV[0-9]+_")


@functools.lru_cache(maxsize=1024)
def env_prefix(resource_name: str) -> str:
    """The environment variable prefix of a resource (``example.com/widget`` → ``EXAMPLECOM_WIDGET``)."""
    return resource_name.upper().replace(".", "").replace("/", "_").replace("-", "_")


def numbered(index: int) -> str:
    """The part that names device ``index``: ``DEV<index>_``."""
    return f"DEV{index}_"


def is_reserved_env_key(key: str) -> bool:
    """Whether ``key`` would collide with a generated name: ID, TYPE, NUM_DEVICES or DEV<n>_*."""
    return key in RESERVED_ENV_KEYS or _NUMBERED_KEY.match(key) is not None


def env_suffixes(count: int, keys: Iterable[str]) -> Iterator[str]:
    """Every name after ``P_`` that a container given ``count`` devices with env ``keys`` may get."""
    keys = sorted(keys)
    yield from (ID_KEY, TYPE_KEY, COUNT_KEY, *keys)
    for index in range(count):
        part = numbered(index)
        for key in (ID_KEY, TYPE_KEY, *keys):
            yield part + key


# -- seats of a shared device -------------------------------------------------
#
# A device with ``capacity: N`` is advertised to the kubelet as N device IDs, its
# seats: the instance ID itself for seat 1 (so capacity 1 is the device as before,
# and raising the capacity keeps running allocations and Leases valid), then
# ``<instanceID>::2`` … ``<instanceID>::N``. Instance IDs never contain ``:``, so no
# seat ID can be another device's ID, and the instance ID is everything before ``::``.

SEAT_SEPARATOR = "::"


def seat_ids(instance_id: str, capacity: int) -> list[str]:
    """The kubelet device IDs of a device's seats, seat 1 first."""
    return [instance_id, *(f"{instance_id}{SEAT_SEPARATOR}{seat}" for seat in range(2, capacity + 1))]


def seat_of(device_id: str) -> tuple[str, int]:
    """(instance ID, seat number) of a kubelet device ID; an ID without a seat part is seat 1."""
    instance, separator, seat = device_id.partition(SEAT_SEPARATOR)
    if separator and seat.isdigit() and seat.isascii():
        return instance, int(seat)
    return device_id, 1


def generation_socket_name(socket_name: str, generation: int, plugin_dir: str) -> str:
    """The name a server moves to when the kubelet still holds its socket path.

    ``spookd-x.sock`` becomes ``spookd-x.g2.sock``: plain and hashed names never
    contain a dot before ``.sock``, so no other resource can have this name.
    The first generation keeps the name it was given.
    """
    if generation <= 1:
        return socket_name
    stem = socket_name.removesuffix(_SOCKET_SUFFIX).split(".g")[0]
    tail = f".g{generation}{_SOCKET_SUFFIX}"
    room = MAX_SOCKET_PATH_BYTES - len(plugin_dir.rstrip("/").encode()) - 1
    return stem.encode()[: max(0, room - len(tail))].decode(errors="ignore") + tail
