"""Typed decoders whose one error is `msgspec.DecodeError` (STYLE §9).

A bare msgspec decoder can raise two other errors on hostile bytes. `RecursionError` on input nested
deeper than the interpreter's recursion limit: msgspec skips unknown fields (append-only messages
depend on that) by recursing into them, so even a flat message type meets it, e.g. an unknown
field holding `[[[...]]]` 50,000 deep. `UnicodeDecodeError` on a msgpack string that is not UTF-8
(msgspec before 0.23; 0.23 raises DecodeError itself).
A caller that catches `DecodeError` lets either escape, and a service loop that catches it dies.
These wrappers turn both into the documented error. Built once per process, like the decoders
they wrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


class Decoder(Generic[T]):
    """`decode(data)` returns a `T` or raises msgspec.DecodeError (ValidationError included).

    `check`, where given, sees each decoded message and returns what is wrong with it (or None):
    a limit a `Meta` cannot express cheaply, checked on decode only, never on construction.
    """

    __slots__ = ("_check", "_decode", "type")

    def __init__(self, decoder: msgspec.json.Decoder | msgspec.msgpack.Decoder,
                 check: Callable[[T], str | None] | None = None) -> None:
        self._decode = decoder.decode
        self._check = check
        self.type = decoder.type

    def decode(self, data: bytes) -> T:
        try:
            value = self._decode(data)
        except RecursionError:
            raise msgspec.DecodeError("input is nested too deeply") from None
        except UnicodeDecodeError as error:
            raise msgspec.DecodeError(f"invalid UTF-8 in a string: {error.reason}") from None
        if self._check is not None:
            problem = self._check(value)
            if problem is not None:
                raise msgspec.ValidationError(problem)
        return value


def json_decoder(type_: type[T] | Any, check: Callable[[T], str | None] | None = None) -> Decoder[T]:
    return Decoder(msgspec.json.Decoder(type_), check)


def msgpack_decoder(type_: type[T] | Any, check: Callable[[T], str | None] | None = None) -> Decoder[T]:
    return Decoder(msgspec.msgpack.Decoder(type_), check)
