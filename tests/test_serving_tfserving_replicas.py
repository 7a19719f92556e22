"""The gateway spreads its calls over every TF Serving replica, and one replica going away moves all calls to the
others with no failed request (issue 13), against serving.tfserving_standin: gRPC PredictionService stand-ins over the
session's SavedModel, not TF Serving. All calls go through the real `TFServingGrpc` transport, with its
CHANNEL_OPTIONS (round_robin, the retry policy for Predict), most of them through the gateway's `tfserving` backend.

In the cluster the gateway's target is `dns:///charlm-tfserving-grpc.<namespace>.svc.cluster.local:8500`: a
headless Service, one A record per ready pod, all on TF Serving's port. Two targets stand for it here:

- `ipv4:127.0.0.1:P1,127.0.0.1:P2`, gRPC's static address-list resolver, for two stand-ins from `serve` (which
  binds 127.0.0.1 only, so they differ by port, and no DNS name can name both: an A record has no port). A
  resolver only hands the channel a list of addresses; round_robin's connection per address and rotation over
  the connected ones, reconnection, transparent retry and the retry policy come after it, the same code whichever
  resolver made the list. Its list never changes, so a stopped replica stays in it, failing to reconnect, and
  round_robin must skip it: the harder case.
- `dns://127.0.0.1:<port>/<name>:<P>`, gRPC's DNS resolver asking a DNS server of the test's own (`TinyDNS`, on
  127.0.0.1; the authority names the server, which gRPC's default c-ares resolver supports) for a name that
  resolves to 127.0.0.1, 127.0.0.2, 127.0.0.3 (all loopback on Linux) with the same port, answers changed as
  Kubernetes changes a headless Service's: a replica leaves the answer before it stops, a replacement joins it.
  The machine's resolver and /etc/hosts are not touched.
"""
import socket
import struct
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from model_interface.client import ModelClient, TFServingGrpc
from model_interface.signatures import fresh_states, metadata_inputs, text_inputs
from serving.app import create_app
from serving.tfserving_standin import SavedModelPredictionService, serve
from serving_helpers import wait_until

CALLS = 40  # per phase
PROMPT = "First Citizen:\n"


@pytest.fixture
def replicas(loaded_model):
    """Two stand-ins on 127.0.0.1 and the target naming both: (services, servers, target)."""
    services = [SavedModelPredictionService("charlm", {1: loaded_model}) for _ in range(2)]
    started = [serve(service) for service in services]
    servers = [server for server, _ in started]
    yield services, servers, "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in started)
    for service in services:
        service.delay_s = 0.0
    for server in servers:
        server.stop(0)


def counts(services) -> list[int]:
    return [len(service.requests) for service in services]


def serve_on(service, host: str, port: int = 0, options=()) -> tuple[grpc.Server, int]:
    """serving.tfserving_standin.serve on another loopback address, with server options: (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=list(options))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, port


class TinyDNS:
    """A DNS server on 127.0.0.1 (UDP, a free port) for one name: A queries get `addresses` (TTL 0), other types
    of it an empty answer, other names NXDOMAIN, and so does the name while `addresses` is empty (what the cluster's
    DNS answers for a headless Service with no ready pod). `queries` counts the A queries."""

    def __init__(self, name: str):
        self.name, self.addresses, self.queries = name, [], 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, name="tiny-dns", daemon=True).start()

    def _serve(self):
        while True:
            try:
                query, client = self.sock.recvfrom(4096)
            except OSError:  # closed
                return
            query_id, = struct.unpack(">H", query[:2])
            end, labels = 12, []
            while query[end]:
                labels.append(query[end + 1:end + 1 + query[end]].decode().lower())
                end += 1 + query[end]
            qtype, = struct.unpack(">H", query[end + 1:end + 3])
            question = query[12:end + 5]
            addresses = list(self.addresses)
            ours = ".".join(labels) == self.name and bool(addresses)
            answers = addresses if ours and qtype == 1 else []
            self.queries += ours and qtype == 1
            reply = struct.pack(">HHHHHH", query_id, 0x8180 if ours else 0x8183, 1, len(answers), 0, 0) + question
            for address in answers:  # a pointer to the question's name, A, IN, TTL 0, 4 bytes
                reply += struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
            try:
                self.sock.sendto(reply, client)
            except OSError:  # closed while answering
                return

    def close(self):
        self.sock.close()


def test_round_robin_spreads_calls_over_both_replicas(replicas, model_client):
    services, _, target = replicas
    client = ModelClient(TFServingGrpc(target, "charlm", deadline_s=5.0), version=1)
    try:
        expected = model_client.score([PROMPT])["bits_per_char"]
        for _ in range(CALLS):  # from a cold channel: the first calls may find one connection up before the other
            np.testing.assert_allclose(client.score([PROMPT])["bits_per_char"], expected, rtol=1e-6)
        cold = counts(services)
        assert sum(cold) == CALLS and min(cold) > 0, cold
        for _ in range(CALLS):  # both connected: round_robin takes them in turn
            client.score([PROMPT])
        warm = [after - before for before, after in zip(cold, counts(services))]
        assert sum(warm) == CALLS and abs(warm[0] - warm[1]) <= 2, warm
    finally:
        client.close()


def test_a_replica_going_away_moves_every_call_to_the_other_through_the_gateway(replicas):
    services, servers, target = replicas
    client = create_app({"backend": "tfserving", "tfserving_address": target, "tfserving_timeout_s": 5.0}).test_client()

    def requests() -> list[str]:
        """CALLS gateway requests, half scores and half short seeded completions (several Predicts each)."""
        texts = []
        for i in range(CALLS):
            if i % 2:
                reply = client.post("/v1/score", json={"text": PROMPT})
                assert reply.status_code == 200, reply.get_data(as_text=True)
                texts.append(str(reply.get_json()["characters"]))
            else:
                reply = client.post("/v1/completions", json={"model": "charlm", "prompt": PROMPT, "max_tokens": 12,
                                                             "seed": i})
                assert reply.status_code == 200, reply.get_data(as_text=True)
                texts.append(reply.get_json()["choices"][0]["text"])
        return texts

    before = requests()
    both = counts(services)
    assert min(both) >= sum(both) // 4, both  # each replica had a fair share of the gateway's backend calls
    servers[0].stop(0).wait()  # no grace: its connections close now
    after = requests()  # not one of them fails
    moved = [n - m for m, n in zip(both, counts(services))]
    assert moved[0] == 0 and moved[1] >= CALLS, moved  # all of them went to the replica that stayed
    assert after == before  # and each is what it was: a seeded completion does not depend on the replica


def test_a_call_in_flight_on_a_replica_that_goes_away_is_retried_on_the_other(replicas, model_client):
    """The call's connection dies under it (UNAVAILABLE): the retry policy sends it again, to the next replica.
    Its request is larger than the 256 KiB gRPC keeps for retrying by default (grpc.per_rpc_retry_buffer_size):
    a generate call of 64 streams of a 2x512 model carries 0.5 MB of state."""
    services, servers, target = replicas
    width = model_client.metadata.state_size
    texts = [PROMPT] * 1200
    inputs = text_inputs(texts, fresh_states(len(texts), width))
    expected = model_client.score(texts, fresh_states(len(texts), width))["bits_per_char"]
    transport = TFServingGrpc(target, "charlm", deadline_s=10.0)
    pool = futures.ThreadPoolExecutor(max_workers=4)
    try:
        # Both connections up first (a fresh channel sends its first calls to whichever connects first).
        assert wait_until(lambda: transport.predict("metadata", metadata_inputs()) and min(counts(services)) > 0,
                          timeout=10), counts(services)
        before = counts(services)
        services[0].delay_s = 3.0  # the first replica takes 3 s to answer: a call to it is in flight when it stops
        calls = []
        while counts(services)[0] == before[0] and len(calls) < 10:  # round-robin: the next call or the one after
            calls.append(pool.submit(transport.predict, "score", inputs, ["bits_per_char"], 1))
            wait_until(lambda: sum(counts(services)) - sum(before) == len(calls), timeout=10)
        assert counts(services)[0] == before[0] + 1, counts(services)
        assert services[0].requests[-1].ByteSize() > 256 << 10
        started = time.monotonic()
        servers[0].stop(0)
        for call in calls:
            outputs, version = call.result(timeout=15)  # every call succeeds, the one in flight on the first too
            np.testing.assert_allclose(outputs["bits_per_char"], expected, rtol=1e-5)
            assert version == 1
        assert time.monotonic() - started < 3.0  # answered by the other replica, not by waiting out the first
        # The second replica ran every call: its own and, again, the one the first was running.
        after = counts(services)
        assert after == [before[0] + 1, before[1] + len(calls)], (before, after, len(calls))
    finally:
        pool.shutdown(wait=False)
        transport.close()


class PeerRecording(SavedModelPredictionService):
    """Records each call's peer (the client's address and port): a new port is a new connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers: set[str] = set()
        self._peers_lock = threading.Lock()

    def Predict(self, request, context):
        with self._peers_lock:
            self.peers.add(context.peer())
        return super().Predict(request, context)


def test_connections_closed_by_age_lose_no_call(loaded_model):
    """TF Serving closes each connection after an age (k8s: --grpc_channel_arguments), so that gateways resolve
    its name again and find replicas added since; a call in flight then finishes, later ones use a new connection.
    Here the age is 100 ms and the target is a dns:/// one, as in the cluster."""
    service = PeerRecording("charlm", {1: loaded_model})
    server, port = serve_on(service, "127.0.0.1", 0, [("grpc.max_connection_age_ms", 100),
                                                      ("grpc.max_connection_age_grace_ms", 5000)])
    client = ModelClient(TFServingGrpc(f"dns:///127.0.0.1:{port}", "charlm", deadline_s=5.0), version=1)
    try:
        with futures.ThreadPoolExecutor(max_workers=4) as pool:
            deadline, done = time.monotonic() + 10, 0
            while (len(service.peers) < 4 or done < 100) and time.monotonic() < deadline:
                for result in pool.map(lambda _: client.score([PROMPT]), range(8)):  # raises if a call failed
                    assert result["bits_per_char"].shape == (1,)
                done += 8
        assert len(service.peers) >= 4, service.peers  # connections were closed and opened again meanwhile
        assert len(service.requests) == done
    finally:
        client.close()
        server.stop(0)


def test_a_dns_name_of_the_replicas_as_kubernetes_changes_it(loaded_model):
    """Through the gateway, a DNS name for every replica: both get calls; one leaving the answer and stopping
    (a pod deleted: endpoint removed during preStop, then SIGTERM) fails no request and leaves its calls to the
    other; a replacement at a new address gets calls once gRPC resolves the name again, which the replicas'
    connection age (TF Serving's --grpc_channel_arguments, 1 s here) brings about within seconds."""
    name = "charlm-tfserving-grpc.charlm.test"
    dns = TinyDNS(name)
    age = [("grpc.max_connection_age_ms", 1000), ("grpc.max_connection_age_grace_ms", 5000)]
    services = [SavedModelPredictionService("charlm", {1: loaded_model}) for _ in range(3)]
    first, port = serve_on(services[0], "127.0.0.1", 0, age)
    servers = [first, serve_on(services[1], "127.0.0.2", port, age)[0]]
    dns.addresses = ["127.0.0.1", "127.0.0.2"]
    client = create_app({"backend": "tfserving", "tfserving_address": f"dns://127.0.0.1:{dns.port}/{name}:{port}",
                         "tfserving_timeout_s": 5.0}).test_client()

    def completion() -> bool:
        reply = client.post("/v1/completions", json={"model": "charlm", "prompt": PROMPT, "max_tokens": 12, "seed": 3})
        assert reply.status_code == 200, reply.get_data(as_text=True)
        return True

    try:
        for _ in range(CALLS // 2):
            completion()
        both = counts(services)
        assert min(both[:2]) > 0 and dns.queries >= 1, (both, dns.queries)
        dns.addresses = ["127.0.0.2"]
        servers[0].stop(0).wait()
        for _ in range(CALLS // 2):
            completion()  # not one fails
        moved = [n - m for m, n in zip(both, counts(services))]
        assert moved[0] == 0 and moved[1] >= CALLS // 2, moved
        servers.append(serve_on(services[2], "127.0.0.3", port, age)[0])
        dns.addresses = ["127.0.0.2", "127.0.0.3"]
        assert wait_until(lambda: completion() and counts(services)[2] > 0, timeout=20, interval=0.05), counts(services)
    finally:
        for server in servers:
            server.stop(0)
        dns.close()
