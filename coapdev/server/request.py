"""What the resource layer reads of a request, whichever path it came by.

aiocoap's :class:`~aiocoap.Message` (requests aiocoap's layers delivered)
and :class:`~coapdev.server.fastpath.FastRequest` (requests the fast path
parsed) both satisfy :class:`CoapRequest`; code that takes either is
annotated with it, and must not read more than it declares.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from aiocoap import Code


@runtime_checkable
class CoapOptions(Protocol):
    """The options a resource reads (aiocoap's names)."""

    @property
    def uri_path(self) -> tuple[str, ...]: ...
    @property
    def uri_query(self) -> tuple[str, ...]: ...
    @property
    def content_format(self) -> Any: ...
    @property
    def accept(self) -> Any: ...
    @property
    def observe(self) -> int | None: ...
    @property
    def block1(self) -> Any: ...
    @property
    def block2(self) -> Any: ...


class CoapRemote(Protocol):
    """The session a request came on."""

    @property
    def authenticated_claims(self) -> Any: ...
    @property
    def hostinfo(self) -> str: ...


@runtime_checkable
class CoapRequest(Protocol):
    """An incoming request as the resource layer sees it."""

    @property
    def code(self) -> Code: ...
    @property
    def opt(self) -> CoapOptions: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def remote(self) -> Any: ...
    @property
    def mid(self) -> int | None: ...
    @property
    def token(self) -> bytes: ...
    @property
    def mtype(self) -> Any: ...
