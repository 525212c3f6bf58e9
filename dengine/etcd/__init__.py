"""etcd's v3 API on a dengine node (docs/etcd-compatibility.md).

``dengine serve --etcd-address HOST:PORT`` answers etcd's gRPC API there
(etcdctl, Go clientv3, jetcd, aetcd), ``--etcd-gateway-address HOST:PORT``
its JSON gateway (Patroni, etcd3gw, curl). An application embedding the
engine opens them with :func:`dengine.etcd.server.open_etcd_api`.

Modules: :mod:`~dengine.etcd.schema` (etcd's messages), :mod:`~dengine.etcd.service`
(the one service both faces call), :mod:`~dengine.etcd.grpc_server` (gRPC over HTTP/2
on trio, with h2), :mod:`~dengine.etcd.gateway` (HTTP/1.1 on trio), :mod:`~dengine.etcd.server`
(both, wired to an engine). They need ``pip install 'dengine[etcd]'``
(protobuf; h2 for the gRPC face); the rest of dengine does not import them.
"""
