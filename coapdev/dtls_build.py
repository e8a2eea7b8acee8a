"""coapdev runs on its own build of DTLSSocket (tinydtls), and checks that it does.

``tools/build-dtls`` builds DTLSSocket's published sdist with the patches in
``tools/dtlssocket/``: handshake policy settable from Python, alerts that no
longer corrupt tinydtls's peer table, 32-byte keys and 64-byte identities,
a PSK copy that checks its length, and connections the garbage collector
can free without crashing.  The unpatched DTLSSocket from PyPI
imports just as well and would silently bring back the crash and the
16-byte limit, so both ends of coapdev ask :func:`patched_dtls` for the
module, which refuses any other build with a message saying how to fix it.
"""

from __future__ import annotations

import functools
from types import ModuleType

from .const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from .errors import DtlsBuildError

#: The patch level of tools/dtlssocket/ this code needs (0006-coapdev-build-marker.patch);
#: level 2 brought 0005, without which a Connection freed by the garbage collector crashes.
REQUIRED_PATCHLEVEL = 2

_FIX = "run tools/setup, or tools/build-dtls --python PYTHON --install for another interpreter"


@functools.cache
def patched_dtls() -> ModuleType:
    """``DTLSSocket.dtls``, if it is coapdev's build; :class:`DtlsBuildError` otherwise."""
    try:
        from DTLSSocket import dtls
    except ImportError as exc:
        raise DtlsBuildError(f"DTLSSocket is not installed ({exc}): {_FIX}") from None
    level = getattr(dtls, "COAPDEV_PATCHLEVEL", None)
    if level is None:
        raise DtlsBuildError(
            f"the DTLSSocket loaded from {dtls.__file__} is not coapdev's patched build "
            f"(it lacks the alert fix and the handshake settings): {_FIX}"
        )
    if level < REQUIRED_PATCHLEVEL:
        raise DtlsBuildError(
            f"the DTLSSocket loaded from {dtls.__file__} has coapdev patch level {level}, "
            f"this coapdev needs {REQUIRED_PATCHLEVEL}: {_FIX}"
        )
    if dtls.PSK_MAX_KEY_LEN < MAX_PSK_BYTES or dtls.PSK_MAX_IDENTITY_LEN < MAX_IDENTITY_BYTES:
        raise DtlsBuildError(
            f"the DTLSSocket loaded takes keys up to {dtls.PSK_MAX_KEY_LEN} bytes and identities "
            f"up to {dtls.PSK_MAX_IDENTITY_LEN}; coapdev mints up to {MAX_PSK_BYTES} and "
            f"{MAX_IDENTITY_BYTES}: {_FIX}"
        )
    return dtls
