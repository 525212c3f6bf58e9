"""etcd's gRPC API: a grpcio server whose threads call into the trio loop.

    async with open_grpc_server(service, "127.0.0.1:2379") as server:
        print(server.port)

Rules of this module:

* grpcio (``pip install 'dengine[etcd]'``) owns the socket, HTTP/2 and its
  worker threads; the trio loop stays the one owner of dengine's state.
  A unary call runs :class:`~dengine.etcd.service.EtcdService` in trio with
  ``trio.from_thread.run`` and answers what it returns (or its
  :class:`~dengine.etcd.service.EtcdError` as a gRPC status); nothing a
  worker thread touches belongs to the loop.
* A stream (Watch, LeaseKeepAlive) is a task in this server's nursery
  between two bounded memory channels: a reader thread feeds the client's
  requests in, the call's worker thread takes the responses out. When the
  client goes away the task is cancelled; when the task ends the stream ends.
* At most ``max_rpcs`` calls (streams included) run at once, each on one
  worker thread; one more is refused by grpcio with ``RESOURCE_EXHAUSTED``.
  A message larger than ``max_message_bytes`` is refused by grpcio.
* A method of etcd's API that dengine does not serve, and any unknown
  method, answers ``UNIMPLEMENTED`` with a sentence saying what.
* The port is bound before the block is entered (``SO_REUSEPORT`` off, so
  an address in use is an :class:`~dengine.errors.AddressInUse` naming it).
* Stop: grpcio stops taking calls and cancels those in flight, then the
  stream tasks are cancelled; no thread of ours outlives the block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from dengine.errors import AddressInUse, ConfigError
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import RPCS, EtcdError, EtcdService, Rpc, etcd_error, not_served

log = logging.getLogger("dengine.etcd")

__all__ = ["GrpcServer", "open_grpc_server", "import_grpc"]

#: Default most calls served at once (each holds a worker thread).
DEFAULT_MAX_RPCS: Final = 256
#: Default largest message, either way (etcd's default request limit is 1.5 MiB + gRPC overhead).
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_STREAM_BUFFER: Final = 64


def import_grpc() -> Any:
    """grpcio, or a ConfigError saying how to install it."""
    try:
        import grpc
    except ImportError:
        raise ConfigError(
            "the etcd gRPC API needs grpcio: pip install 'dengine[etcd]' (the JSON gateway does not)"
        ) from None
    return grpc


class GrpcServer:
    """A running gRPC face: ``port`` is the bound port."""

    def __init__(self, grpc: Any, service: EtcdService, nursery: trio.Nursery, token: trio.lowlevel.TrioToken) -> None:
        self._grpc = grpc
        self.service = service
        self._nursery = nursery
        self._token = token
        self.port = 0
        self._closing = False

    # -- handlers (grpcio worker threads) ---------------------------------

    def handler(self, path: str) -> Any:
        grpc = self._grpc
        rpc = RPCS.get(path)
        if rpc is None:
            error = not_served(path)

            def refuse(requests: Any, context: Any) -> Any:
                context.abort(grpc.StatusCode[error.code], error.message)

            return grpc.stream_stream_rpc_method_handler(refuse)
        decode = M[rpc.request].FromString
        encode = M[rpc.response].SerializeToString
        if rpc.stream:
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: self._stream(rpc, requests, context),
                request_deserializer=decode, response_serializer=encode)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(rpc, request, context),
            request_deserializer=decode, response_serializer=encode)

    def _abort(self, context: Any, error: EtcdError) -> None:
        context.abort(self._grpc.StatusCode[error.code], error.message)

    def _unary(self, rpc: Rpc, request: Any, context: Any) -> Any:
        remaining = context.time_remaining()
        try:
            return trio.from_thread.run(self._call, rpc.method, request, remaining, trio_token=self._token)
        except EtcdError as exc:
            self._abort(context, exc)
        except (trio.RunFinishedError, trio.Cancelled):
            self._abort(context, EtcdError("UNAVAILABLE", "etcdserver: server stopped"))

    async def _call(self, method: str, request: Any, remaining: float | None) -> Any:
        try:
            with trio.fail_after(remaining if remaining is not None and remaining > 0 else float("inf")):
                return await getattr(self.service, method)(request)
        except trio.TooSlowError:
            raise EtcdError("DEADLINE_EXCEEDED", "context deadline exceeded") from None
        except Exception as exc:
            raise etcd_error(exc) from None

    def _stream(self, rpc: Rpc, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        token = self._token
        try:
            channels = trio.from_thread.run_sync(self._open_stream, rpc, trio_token=token)
        except (trio.RunFinishedError, RuntimeError):
            self._abort(context, EtcdError("UNAVAILABLE", "etcdserver: server stopped"))
            return
        in_send, out_recv, scope = channels

        def cancel() -> None:
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass

        context.add_callback(cancel)
        reader = threading.Thread(target=self._read, args=(requests, in_send), daemon=True,
                                  name=f"dengine etcd {rpc.method} reader")
        reader.start()
        try:
            while True:
                try:
                    item = trio.from_thread.run(out_recv.receive, trio_token=token)
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.RunFinishedError):
                    return
                if isinstance(item, EtcdError):
                    self._abort(context, item)
                    return
                yield item
        finally:
            cancel()

    def _read(self, requests: Iterator[Any], in_send: trio.MemorySendChannel[Any]) -> None:
        token = self._token
        try:
            for request in requests:
                trio.from_thread.run(in_send.send, request, trio_token=token)
        except Exception:  # the call ended (cancelled by the client, the server stopping)
            pass
        finally:
            try:
                trio.from_thread.run_sync(in_send.close, trio_token=token)
            except trio.RunFinishedError:
                pass

    # -- stream tasks (trio) ------------------------------------------------

    def _open_stream(self, rpc: Rpc) -> tuple[Any, Any, trio.CancelScope]:
        if self._closing:
            raise RuntimeError("stopping")
        in_send, in_recv = trio.open_memory_channel[Any](_STREAM_BUFFER)
        out_send, out_recv = trio.open_memory_channel[Any](_STREAM_BUFFER)
        scope = trio.CancelScope()
        self._nursery.start_soon(self._run_stream, rpc, in_recv, out_send, scope,
                                 name=f"dengine etcd {rpc.method} stream")
        return in_send, out_recv, scope

    async def _run_stream(self, rpc: Rpc, in_recv: Any, out_send: Any, scope: trio.CancelScope) -> None:
        async with out_send, in_recv:
            with scope:
                try:
                    await getattr(self.service, rpc.method)(in_recv, out_send.send)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                except Exception as exc:
                    with trio.move_on_after(1):
                        await out_send.send(etcd_error(exc))


class _Handler:
    """grpcio's generic handler: every path goes to :meth:`GrpcServer.handler`."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server

    def service(self, details: Any) -> Any:
        return self._server.handler(details.method)


def _credentials(grpc: Any, cert: str, key: str, ca: str | None) -> Any:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_server_credentials([(read(key), read(cert))], root_certificates=read(ca) if ca else None,
                                       require_client_auth=ca is not None)


@asynccontextmanager
async def open_grpc_server(
    service: EtcdService,
    address: str,
    *,
    tls: tuple[str, str, str | None] | None = None,
    max_rpcs: int = DEFAULT_MAX_RPCS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[GrpcServer]:
    """Serve etcd's gRPC API for ``service`` at ``address`` (``host:port``)
    until the block exits. ``tls``: (certificate, key, CA or None) paths;
    with a CA, clients must present a certificate it signed."""
    grpc = import_grpc()
    pool = ThreadPoolExecutor(max_workers=max_rpcs, thread_name_prefix="dengine-etcd-grpc")
    async with trio.open_nursery() as nursery:
        face = GrpcServer(grpc, service, nursery, trio.lowlevel.current_trio_token())
        server = grpc.server(
            pool, handlers=[_Handler(face)], maximum_concurrent_rpcs=max_rpcs,
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes)],
        )
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, _credentials(grpc, *tls))
        except RuntimeError:
            port = 0
        if not port:
            pool.shutdown(wait=False)
            raise AddressInUse(f"cannot serve the etcd API at {address}: the address is in use or not local")
        face.port = port
        server.start()
        log.info("etcd gRPC API at %s", address.rsplit(":", 1)[0] + f":{port}")
        try:
            yield face
        finally:
            face._closing = True
            stopped = server.stop(grace=0.5)
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(stopped.wait, 5)
                await trio.to_thread.run_sync(lambda: pool.shutdown(wait=True, cancel_futures=True))
