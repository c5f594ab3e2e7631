"""Finding a SunSpec register map: the `SunS` marker at 40000, 0 or 50000, then the chain of models.

After the two marker registers each model is `ID, L, body[L]`; the next model starts right after the body and the
chain ends with ID 0xFFFF. Vendors place models in different orders and firmware updates move them, so nothing
after discovery assumes an address: points are found by model id and name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from drivers.sunspec.transport import ExceptionReply

BASES = (40000, 0, 50000)
MARKER = (0x5375, 0x6E53)  # "SunS"
END_ID = 0xFFFF
MAX_MODELS = 64  # a longer chain is a broken device, not a map


class DiscoveryError(ValueError):
    """No SunSpec marker where SunSpec puts it, or a model chain that runs off the register space."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model in a device's chain: its id, the address of its ID register and its declared length L."""

    model_id: int
    address: int
    length: int


ReadFn = Callable[[int, int], Awaitable[list[int]]]


async def find_base(read: ReadFn, bases: tuple[int, ...] = BASES) -> int:
    """The address of the `SunS` marker; `read` raising for an address (exception reply) means "not here"."""
    for base in bases:
        try:
            words = await read(base, 2)
        except ExceptionReply:  # e.g. illegal address: nothing mapped there, try the next place
            continue
        if tuple(words) == MARKER:
            return base
    raise DiscoveryError(f"no SunSpec marker 'SunS' at {', '.join(map(str, bases))}")


async def walk(read: ReadFn, base: int) -> list[ModelEntry]:
    """The model chain after the marker at `base`, in device order."""
    models: list[ModelEntry] = []
    address = base + 2
    while len(models) < MAX_MODELS:
        model_id, length = await read(address, 2)
        if model_id == END_ID:
            return models
        if address + 2 + length > 65536:
            raise DiscoveryError(f"model {model_id} at {address} with L={length} runs past register 65535")
        models.append(ModelEntry(model_id, address, length))
        address += 2 + length
    raise DiscoveryError(f"no end marker after {MAX_MODELS} models (from {base})")


async def discover(read: ReadFn, bases: tuple[int, ...] = BASES) -> tuple[int, list[ModelEntry]]:
    base = await find_base(read, bases)
    return base, await walk(read, base)
