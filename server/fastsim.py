"""Speed-ups for Flower 1.41's simulation runtime, active only inside ``fast_simulation()``.

Version-pinned: the patches replace private internals of ``flwr`` 1.41.x and are installed only
when ``flwr.__version__`` starts with ``"1.41."``; on any other version ``fast_simulation()``
logs a warning and changes nothing. Every patch is undone when the ``with`` block exits (also
on an exception); a nested ``fast_simulation()`` is a no-op.

Measured with ``benchmarks/flower_overhead.py`` (echo ClientApp, 450 KB float32 ArrayRecord,
2 Ray actors, 2 shared CPU cores, so +-20% noise), unpatched -> patched:

=====================  ===================  ================  ================
nodes / msgs per round  ms per message       start-up (s)      driver CPU (s)
=====================  ===================  ================  ================
1,000 / 100            11.3 -> 3.1          7.5 -> 3.0        7.2 -> 2.3
1,000 / 1,000          17.8 -> 2.7          7.0 -> 3.0        80 -> 10
100,000 / 100          --                   -> 4.3            -> 3.8
100,000 / 1,000        no round in 120 s    -> 4.9            -> 11.7
=====================  ===================  ================  ================

What is patched, and why:

1. ``InMemoryLinkState.get_message_ins`` scans the whole ``message_ins_store`` on every call,
   and the runtime calls it for every registered node every 0.1 s: O(nodes x stored messages)
   per sweep, >50% of the driver's py-spy samples. The patch keeps on the LinkState instance
   an index of undelivered message ids by destination node (maintained by
   ``store_message_ins``, delivery and ``delete_messages``; rebuilt from the store if stale),
   so a call costs O(messages for that node). Expiry (TTL) and federation checks still run,
   through the original ``_check_stored_messages``, on each message before it is returned.
   One difference: a call no longer purges expired messages of *other* nodes as a side effect
   (they are purged when their node is polled or the ServerApp pulls replies). Delivery is
   marked under the state's lock, so a message is handed out at most once.
2. ``vce_api.add_messages_to_queue`` (a module global for ``run_api``) polls every registered
   node, then sleeps 0.1 s. The replacement polls only nodes with pending messages (from the
   index), sweeps again at once while it delivers, and otherwise waits on an event set by
   ``store_message_ins`` (0.1 s timeout, so ``f_stop`` is honoured as before). Same
   signature; the original runs for a LinkState that is not in-memory.
3. ``RayBackend.init_ray``, for a local cluster (no ``address`` in ``init_args``):
   - sets Ray's ``max_direct_call_object_size`` (default 100 KiB) to ``inline_bytes`` (8 MiB),
     so a 450 KB message travels inline with its task rather than through the plasma store:
     3.3 vs 6.9 ms per Ray round trip, 3.6 vs 7.3 ms per message at 1,000 per round; the
     raylet's CPU fell from 9 s to <0.5 s per 3,000 messages;
   - drops ``runtime_env={"env_vars": {"PYTHONPATH": ...}}``, which makes actors wait for
     Ray's runtime-env agent (2 actors ready in 0.9 s vs 0.06 s). Flower exports the same
     PYTHONPATH to ``os.environ`` first, and the cluster ``ray.init`` starts inherits it.
4. ``RayBackend.build`` uses ``fastsim_ray.LightClientAppActor``, a copy of Flower's actor in a
   stdlib-only module: Ray imports the actor's module in each worker, and ``flwr.simulation``
   pulls in SQLAlchemy, Alembic and gRPC (2 actors ready in 1.9 s vs 0.3 s).
5. ``vce_api._register_node_info_stores`` builds a Context per node up front (1.2 s and
   ~120 MB at 100,000 nodes); the replacement builds one on a node's first message.

Measured and left alone: ``get_message_res`` (each ServerApp pull, O(outstanding): 2.9 ms at
1,000 outstanding, 10 pulls/s); waking ``send_and_receive`` as soon as all replies are stored
instead of its 0.1 s sleep (no measurable gain); ``ray.init`` itself (~2.2 s: waiting for
Ray's processes; no init argument tried changed it); ``_register_nodes`` (1 s at 100,000).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from shoal.server.fastsim_ray import PATCH_MARKER, make_build, make_init_ray

logger = logging.getLogger(__name__)

#: The Flower versions whose internals the patches target.
SUPPORTED_FLWR_PREFIX = "1.41."
#: Attribute on an ``InMemoryLinkState`` instance that holds its pending-message index.
INDEX_ATTR = "_shoal_fastsim_index"
#: Ray's ``max_direct_call_object_size`` inside the block (Ray's default is 100 KiB).
DEFAULT_INLINE_BYTES = 8 * 2**20
#: Longest wait of the message extractor before it re-checks its stop event.
EXTRACTOR_WAIT_S = 0.1


@dataclass
class PendingIndex:
    """Undelivered message-ins ids of one LinkState, by destination node id.

    ``token`` identifies the ``fast_simulation()`` activation that built the index: an index
    left on a state by an earlier activation is stale (messages stored while unpatched are
    missing from it) and is rebuilt. Per-node dicts keep insertion (= store) order.
    """

    token: object
    by_node: dict[int, dict[str, None]] = field(default_factory=dict)
    wakeup: threading.Event = field(default_factory=threading.Event)

    def add(self, node_id: int, message_id: str) -> None:
        """Record ``message_id`` as pending for ``node_id``."""
        self.by_node.setdefault(node_id, {})[message_id] = None

    def discard(self, node_id: int, message_id: str) -> None:
        """Forget ``message_id`` (delivered or deleted); drop the node once it has none."""
        pending = self.by_node.get(node_id)
        if pending is None:
            return
        pending.pop(message_id, None)
        if not pending:
            del self.by_node[node_id]


def flwr_version_supported(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed ``flwr.__version__``) is patchable."""
    if version is None:
        import flwr

        version = flwr.__version__
    return version.startswith(SUPPORTED_FLWR_PREFIX)


def pending_index(state: Any, token: object) -> PendingIndex:
    """Return ``state``'s index for activation ``token``, (re)building it from the store.

    Call with ``state.lock`` held.
    """
    index = state.__dict__.get(INDEX_ATTR)
    if index is None or index.token is not token:
        index = PendingIndex(token)
        for message_id, message in state.message_ins_store.items():
            if message.metadata.delivered_at == "":
                index.add(message.metadata.dst_node_id, message_id)
        state.__dict__[INDEX_ATTR] = index
    return index


def make_store_message_ins(original: Callable, token: object) -> Callable:
    """Wrap ``InMemoryLinkState.store_message_ins`` to index what it stores."""

    def store_message_ins(self: Any, message: Any) -> str | None:
        with self.lock:
            message_id = original(self, message)
            if message_id is not None:
                stored = self.message_ins_store.get(message_id)
                if stored is not None and stored.metadata.delivered_at == "":
                    index = pending_index(self, token)
                    index.add(stored.metadata.dst_node_id, message_id)
                    index.wakeup.set()
        return message_id

    store_message_ins.__doc__ = original.__doc__
    setattr(store_message_ins, PATCH_MARKER, True)
    return store_message_ins


def make_delete_messages(original: Callable, token: object) -> Callable:
    """Wrap ``InMemoryLinkState.delete_messages`` to drop deleted ids from the index."""

    def delete_messages(self: Any, message_ins_ids: set[str]) -> None:
        with self.lock:
            index = self.__dict__.get(INDEX_ATTR)
            if index is not None and index.token is token:
                for message_id in message_ins_ids:
                    message = self.message_ins_store.get(message_id)
                    if message is not None:
                        index.discard(message.metadata.dst_node_id, message_id)
            original(self, message_ins_ids)

    delete_messages.__doc__ = original.__doc__
    setattr(delete_messages, PATCH_MARKER, True)
    return delete_messages


def make_get_message_ins(now: Callable, token: object) -> Callable:
    """Build an indexed ``InMemoryLinkState.get_message_ins`` (same signature and result).

    ``now`` is Flower's clock (looked up at call time so a patched clock is honoured).
    """

    def get_message_ins(
        self: Any, node_id: int, limit: int | None, *, run_id: int | None = None
    ) -> list:
        """Get all Messages that have not been delivered yet (indexed by node)."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list = []
        with self.lock:
            index = pending_index(self, token)
            pending = index.by_node.get(node_id)
            if not pending:
                return found
            for message_id in list(pending):
                # Deletes the message if it expired or left the federation (as the original).
                self._check_stored_messages({message_id})
                message = self.message_ins_store.get(message_id)
                if (
                    message is None
                    or message.metadata.delivered_at != ""
                    or message.metadata.dst_node_id != node_id
                ):
                    index.discard(node_id, message_id)
                    continue
                if run_id is not None and message.metadata.run_id != run_id:
                    continue
                found.append(message)
                if limit and len(found) == limit:
                    break
            delivered_at = now().isoformat()
            for message in found:
                message.metadata.delivered_at = delivered_at
                index.discard(node_id, message.metadata.message_id)
        return found

    setattr(get_message_ins, PATCH_MARKER, True)
    return get_message_ins


def make_add_messages_to_queue(
    original: Callable, state_cls: type, patched_get: Callable, token: object
) -> Callable:
    """Build a ``vce_api.add_messages_to_queue`` that polls only nodes with pending messages."""

    def add_messages_to_queue(
        state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: threading.Event
    ) -> None:
        """Put Messages in the queue from the LinkState."""
        if not isinstance(state, state_cls):
            original(state, queue, nodes_mapping, f_stop)
            return
        while not f_stop.is_set():
            if type(state).get_message_ins is not patched_get:
                # The patches were removed while the runtime still runs: carry on unpatched.
                original(state, queue, nodes_mapping, f_stop)
                return
            with state.lock:
                index = pending_index(state, token)
                index.wakeup.clear()
                nodes = [node_id for node_id in index.by_node if node_id in nodes_mapping]
            delivered = 0
            for node_id in nodes:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
                    delivered += 1
            if not delivered:
                index.wakeup.wait(EXTRACTOR_WAIT_S)

    setattr(add_messages_to_queue, PATCH_MARKER, True)
    return add_messages_to_queue


class LazyNodeInfoStores(dict):
    """``{node_id: DeprecatedRunInfoStore}`` that creates a node's store on first access.

    Holds the same stores the eager original would hold for every node that is ever
    accessed; the other nodes cost nothing.
    """

    def __init__(self, create: Callable[[int], Any], node_ids: Any) -> None:
        super().__init__()
        self._create = create
        self._node_ids = node_ids
        self._lock = threading.Lock()

    def __missing__(self, node_id: int) -> Any:
        if node_id not in self._node_ids:
            raise KeyError(node_id)
        with self._lock:
            if not dict.__contains__(self, node_id):
                dict.__setitem__(self, node_id, self._create(node_id))
            return dict.__getitem__(self, node_id)


def make_register_node_info_stores(vce_api: Any) -> Callable:
    """Build a ``vce_api._register_node_info_stores`` that creates node contexts lazily."""

    def register_node_info_stores(
        nodes_mapping: dict[int, int], run: Any, app_dir: str | None = None
    ) -> dict:
        """Create DeprecatedRunInfoStore objects (lazily) and register the run's context."""
        num_partitions = len(set(nodes_mapping.values()))

        def create(node_id: int) -> Any:
            store = vce_api.DeprecatedRunInfoStore(
                node_id=node_id,
                node_config={
                    vce_api.PARTITION_ID_KEY: nodes_mapping[node_id],
                    vce_api.NUM_PARTITIONS_KEY: num_partitions,
                },
            )
            store.register_context(run_id=run.run_id, run=run, app_dir=app_dir)
            return store

        stores = LazyNodeInfoStores(create, nodes_mapping)
        if nodes_mapping:
            stores[next(iter(nodes_mapping))]  # fail now on a bad app_dir, as the original
        return stores

    setattr(register_node_info_stores, PATCH_MARKER, True)
    return register_node_info_stores


def swap_attr(stack: ExitStack, owner: Any, name: str, new: Any) -> Any:
    """Set ``owner.name = new`` and register its restoration on ``stack``; return the old."""
    had_own = name in vars(owner)
    old = vars(owner)[name] if had_own else getattr(owner, name)

    def restore() -> None:
        if had_own:
            setattr(owner, name, old)
        else:
            delattr(owner, name)

    setattr(owner, name, new)
    stack.callback(restore)
    return old


def install_patches(stack: ExitStack, inline_bytes: int) -> None:
    """Install every patch; ``stack`` restores the originals when closed."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.server.superlink.linkstate import in_memory_linkstate

    state_cls = in_memory_linkstate.InMemoryLinkState
    token = object()

    get_message_ins = make_get_message_ins(lambda: in_memory_linkstate.now(), token)
    old_store = vars(state_cls)["store_message_ins"]
    old_delete = vars(state_cls)["delete_messages"]
    swap_attr(stack, state_cls, "store_message_ins", make_store_message_ins(old_store, token))
    swap_attr(stack, state_cls, "delete_messages", make_delete_messages(old_delete, token))
    swap_attr(stack, state_cls, "get_message_ins", get_message_ins)

    old_add = vce_api.add_messages_to_queue
    swap_attr(
        stack,
        vce_api,
        "add_messages_to_queue",
        make_add_messages_to_queue(old_add, state_cls, get_message_ins, token),
    )

    swap_attr(
        stack,
        vce_api,
        "_register_node_info_stores",
        make_register_node_info_stores(vce_api),
    )

    backend_cls = raybackend.RayBackend
    swap_attr(stack, backend_cls, "build", make_build(raybackend))
    swap_attr(
        stack, backend_cls, "init_ray", make_init_ray(vars(backend_cls)["init_ray"], inline_bytes)
    )


def is_patched() -> bool:
    """Whether a ``fast_simulation()`` block is active (its patches are installed)."""
    from flwr.server.superlink.linkstate import in_memory_linkstate

    method = in_memory_linkstate.InMemoryLinkState.get_message_ins
    return bool(getattr(method, PATCH_MARKER, False))


@contextmanager
def fast_simulation(*, inline_bytes: int = DEFAULT_INLINE_BYTES) -> Iterator[bool]:
    """Patch Flower 1.41's simulation runtime for low per-message overhead inside the block.

    Parameters
    ----------
    inline_bytes : int
        Ray's ``max_direct_call_object_size`` for a cluster started inside the block: task
        arguments and results up to this size travel inline with the task instead of through
        the shared-memory object store (ignored if ``init_args`` set it themselves).

    Yields
    ------
    bool
        True when the patches are active; False on an unsupported Flower version (a warning
        is logged and nothing changes) or when an enclosing block already patched.

    Examples
    --------
    >>> with fast_simulation():  # doctest: +SKIP
    ...     run_simulation(server_app, client_app, num_supernodes=100_000)
    """
    import flwr

    if not isinstance(inline_bytes, int) or inline_bytes < 0:
        raise ValueError(f"inline_bytes must be an int >= 0, got {inline_bytes!r}")
    if not flwr_version_supported(flwr.__version__):
        logger.warning(
            "fast_simulation(): flwr %s is not supported (patches target %sx); "
            "running the simulation unpatched.",
            flwr.__version__,
            SUPPORTED_FLWR_PREFIX,
        )
        yield False
        return
    if is_patched():
        yield False
        return
    with ExitStack() as stack:
        try:
            install_patches(stack, inline_bytes)
        except (AttributeError, KeyError, ImportError) as ex:
            raise RuntimeError(
                f"fast_simulation(): flwr {flwr.__version__} lacks an internal the patches "
                f"replace ({ex!r}); they were written against flwr 1.41.0"
            ) from ex
        yield True
