"""Ray-side patches of :mod:`shoal.server.fastsim`: Ray start-up and the actor class.

Standard library imports only: Ray imports the actor class's module in every worker, and a
light module is what makes actors start fast (see :class:`LightClientAppActor`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

#: Marker attribute set on every patch function (detects nesting and patched methods).
PATCH_MARKER = "__shoal_fastsim__"


def make_init_ray(original: Callable, inline_bytes: int) -> Callable:
    """Build a ``RayBackend.init_ray`` tuned for a local cluster (see the module docstring)."""

    def init_ray(self: Any, backend_config: dict) -> None:
        """Intialise Ray if not already initialised (no runtime_env for a local cluster)."""
        import ray

        init_args = dict(backend_config.get(self.init_args_key) or {})
        if ray.is_initialized() or init_args.get("address") or "runtime_env" in init_args:
            original(self, backend_config)
            return
        init_args.setdefault("include_dashboard", False)
        system_config = dict(init_args.get("_system_config") or {})
        system_config.setdefault("max_direct_call_object_size", inline_bytes)
        init_args["_system_config"] = system_config
        # As Flower does: Ray processes inherit the environment, not this sys.path.
        pythonpath = os.pathsep.join(sys.path)
        if os.environ.get("PYTHONPATH"):
            pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
        os.environ["PYTHONPATH"] = pythonpath
        ray.init(**init_args)

    init_ray.__doc__ = original.__doc__
    setattr(init_ray, PATCH_MARKER, True)
    return init_ray


class LightClientAppActor:
    """Flower 1.41's ``ClientAppActor`` in a module that imports only the standard library.

    Ray imports an actor class's module in each worker; Flower's lives in
    ``flwr.simulation``, whose import pulls in SQLAlchemy, Alembic and gRPC (~1 s CPU per
    worker). The methods are copies of ``VirtualClientEngineActor``'s.
    """

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Callable, message: Any, cid: str, context: Any) -> tuple:
        """Pass ``message`` through the ClientApp; return ``(cid, reply, context)``."""
        from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

        try:
            app = client_app_fn()
            out_message = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        """Manually terminate the actor."""
        import ray
        from flwr.supercore import log

        log(logging.WARNING, "Manually terminating %s", type(self).__name__)
        ray.actor.exit_actor()


def make_build(raybackend: Any) -> Callable:
    """Build a ``RayBackend.build`` whose actor pool runs :class:`LightClientAppActor`."""

    def build(self: Any, app_fn: Callable) -> None:
        """Build pool of Ray actors that this backend will submit jobs to."""
        import ray

        self.pool = raybackend.BasicActorPool(
            actor_type=ray.remote(LightClientAppActor),
            client_resources=self.client_resources,
            actor_kwargs=self.actor_kwargs,
        )
        self.pool.add_actors_to_pool(self.pool.actors_capacity)
        self.app_fn = app_fn

    setattr(build, PATCH_MARKER, True)
    return build
