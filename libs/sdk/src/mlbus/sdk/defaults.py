"""Where the SDK and CLI connect and who they act as, when the caller does not say.

The SDK is a library run in notebooks and scripts, so (unlike services, whose settings are
built once in ``main()``) it reads these environment variables itself.
"""

from __future__ import annotations

import getpass
import os

#: Environment variable naming the registry (``host:port``).
REGISTRY_ENV = "MLBUS_REGISTRY"
#: Environment variable naming the router, the inference front door (``host:port``).
ROUTER_ENV = "MLBUS_ROUTER"
#: The router of a local stack (``mlbus up``).
DEFAULT_ROUTER = "127.0.0.1:8001"
#: Environment variable naming who acts (recorded in the audit log).
ACTOR_ENV = "MLBUS_ACTOR"
#: The registry of a local stack (``mlbus up``).
DEFAULT_REGISTRY = "127.0.0.1:50052"


def default_registry() -> str:
    """``$MLBUS_REGISTRY`` or ``127.0.0.1:50052``."""
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


def default_router() -> str:
    """``$MLBUS_ROUTER`` or ``127.0.0.1:8001``."""
    return os.environ.get(ROUTER_ENV) or DEFAULT_ROUTER


def default_actor() -> str:
    """``$MLBUS_ACTOR``, else the operating-system user name."""
    actor = os.environ.get(ACTOR_ENV)
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # Containers often run as a uid without a passwd entry.
        return f"uid-{os.getuid()}"
