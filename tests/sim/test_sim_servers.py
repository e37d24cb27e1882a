"""Every simulated route answers with the shape the real service uses, to a real HTTPS client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditor.errors import AuditorError
from auditor.rules import load_pack
from auditor.sim import Simulation, names, payloads
from auditor.sim.dns import query_a
from auditor.sim.worker import sigv4_headers

from .conftest import SimClient

AGENT = {"Authorization": names.API_KEY, "X-Gretel-Clusterid": names.CLUSTER_GUID}


def _project_id(client: SimClient) -> str:
    r = client.request("GET", names.API, f"/projects/{names.PROJECT_NAME}", headers=AGENT)
    assert r.status_code == 200
    return str(r.json()["data"]["project"]["_id"])


def _poll(client: SimClient, project_id: str) -> httpx.Response:
    return client.request("POST", names.API, "/jobs/receive_one", headers=AGENT, params={
        "project_ids": project_id, "org_only": "true", "runner_modes": "hybrid", "cluster_guid": names.CLUSTER_GUID})


def test_agent_routes(fresh: Simulation, client: SimClient) -> None:
    billing = client.request("GET", names.API, "/users/me/billing", headers=AGENT)
    assert billing.status_code == 200
    assert billing.json()["data"]["billing"]["me"]["service_limits"]["max_jobs_active"] == 4

    invites = client.request("GET", names.API, "/users/me/invites", headers=AGENT,
                             params={"invite_types": "project", "org_only": "true", "include_expired": "false"})
    (invite,) = invites.json()["data"]["invites"]
    assert invite["level"] == 3 and invite["invited_by"]["email"] == names.USER_EMAIL
    assert "timestamp" in invites.json()["data"]
    accepted = client.request("PATCH", names.API, f"/users/me/invites/{invite['_id']}", headers=AGENT)
    assert accepted.json()["data"]["invite"]["status"] == "accepted"
    assert client.request("GET", names.API, "/users/me/invites", headers=AGENT).json()["data"]["invites"] == []
    assert client.request("PATCH", names.API, "/users/me/invites/nope", headers=AGENT).status_code == 404

    project = client.request("GET", names.API, f"/projects/{names.PROJECT_NAME}", headers=AGENT).json()["data"]["project"]
    assert project["name"] == names.PROJECT_NAME and project["runner_mode"] == "hybrid"
    assert client.request("GET", names.API, "/projects/no-such-project", headers=AGENT).status_code == 404

    login = client.request("GET", names.API, "/opt/containers/get_login", headers=AGENT).json()["data"]
    assert login["registry"] == names.REGISTRY
    assert login["auth"]["username"] == "AWS" and login["auth"]["password"]

    assert client.request("GET", names.API, "/users/me/billing").status_code == 401  # no API key


def test_job_cycle_and_status_patch(fresh: Simulation, client: SimClient) -> None:
    project_id = _project_id(client)
    assert _poll(client, project_id).json() == {"data": {"job": None}}

    model = client.request("POST", names.API, f"/projects/{project_id}/models", headers=AGENT,
                           params={"runner_mode": "hybrid"}, json=payloads.model_config(names.PROJECT_NAME))
    assert model.status_code == 200
    model_id = model.json()["data"]["model"]["uid"]
    assert "model_key" not in model.json()["data"]["model"]

    job = _poll(client, project_id).json()["data"]["job"]
    assert job["model_id"] == model_id and job["job_type"] == "train" and job["run_id"] is None
    assert job["container_image"] == f"{names.REGISTRY}/{names.REGISTRY_REPO}:{names.IMAGE_TAG}"
    worker_key = json.loads(base64.b64decode(job["worker_token"]))["model_key"]
    assert _poll(client, project_id).json()["data"]["job"] is None  # handed out once

    params = {"uid": model_id, "type": "train"}
    patched = client.request("PATCH", names.API, "/projects/models", params=params,
                             headers={"Authorization": worker_key}, json={"uid": model_id, "status": "pending"})
    assert patched.json() == {"data": {"model": {"uid": model_id, "status": "pending"}}}
    assert fresh.state.models[model_id]["status"] == "pending"
    wrong = client.request("PATCH", names.API, "/projects/models", params=params,
                           headers={"Authorization": names.API_KEY}, json={"uid": model_id, "status": "active"})
    assert wrong.status_code == 401
    bad = client.request("PATCH", names.API, "/projects/models", params=params,
                         headers={"Authorization": worker_key}, json={"uid": model_id, "status": "exploded"})
    assert bad.status_code == 400

    logs = client.request("POST", names.API, "/projects/models/logs", params=params, headers={"Authorization": worker_key},
                          json={"uid": model_id, "logs": [{"ts": "2026-01-01T00:00:00Z", "msg": "Training data loaded",
                                                           "ctx": {"record_count": 12}, "seq": 1, "stage": "pre"}]})
    assert logs.json() == {"data": {"accepted": 1}}
    assert fresh.state.log_lines[-1]["msg"] == "Training data loaded"


def test_cloud_model_is_not_queued_for_hybrid(fresh: Simulation, client: SimClient) -> None:
    project_id = _project_id(client)
    client.request("POST", names.API, f"/projects/{project_id}/models", headers=AGENT,
                   json=payloads.model_config(names.PROJECT_NAME))
    assert _poll(client, project_id).json()["data"]["job"] is None


def test_sdk_and_workflow_routes(fresh: Simulation, client: SimClient) -> None:
    created = client.request("POST", names.API, "/projects", headers=AGENT, json={
        "name": "second", "display_name": "second", "description": "d", "runner_mode": "hybrid",
        "cluster_guid": names.CLUSTER_GUID})
    project_id = created.json()["data"]["id"]
    assert created.json()["data"]["project"]["runner_mode"] == "hybrid"
    assert client.request("POST", names.API, f"/projects/{project_id}/invites", headers=AGENT,
                          json={"email": names.AGENT_EMAIL, "level": 3}).status_code == 200

    conn = client.request("POST", names.API, "/v1/connections", headers=AGENT, json={
        "project_id": project_id, "name": "s3", "type": "s3", "encrypted_credentials": payloads.encrypted_credentials()})
    conn_id = conn.json()["id"]
    assert conn_id.startswith("c_")
    creds = client.request("GET", names.API, f"/v1/connections/{conn_id}/credentials", headers=AGENT).json()
    assert creds["encrypted_credentials"] == payloads.encrypted_credentials()
    assert client.request("PATCH", names.API, f"/v1/connections/{conn_id}", headers=AGENT,
                          json={"name": "renamed"}).json()["name"] == "renamed"

    wf = client.request("POST", names.API, "/v1/workflows", headers=AGENT, json={
        "name": "wf", "project_id": project_id, "config": payloads.workflow_config(project_id), "runner_mode": "hybrid"})
    workflow_id = wf.json()["id"]
    run = client.request("POST", names.API, "/v1/workflows/runs", headers=AGENT, json={"workflow_id": workflow_id}).json()
    assert run["id"].startswith("wr_") and run["status"] == "RUN_STATUS_PENDING"
    task_id = run["actions"][0]["task_id"]
    assert client.request("POST", names.API, "/v1/workflows/runs", headers=AGENT,
                          json={"workflow_id": "w_missing"}).status_code == 404

    task = client.request("PATCH", names.API, f"/v1/workflows/runs/{run['id']}/tasks/{task_id}", headers=AGENT,
                          json={"status": "RUN_STATUS_ACTIVE"})
    assert task.json() == {"id": task_id, "status": "RUN_STATUS_ACTIVE"}

    upload = client.request("GET", names.API, f"/v1/logs/workflowruns/{run['id']}/actions/synthesize/tasks/{task_id}",
                            headers=AGENT).json()
    assert set(upload) == {"upload_url", "valid_until"}
    assert upload["upload_url"].startswith(f"https://{names.API}/v1/workflows/runs/{run['id']}/tasks/{task_id}/logs?")
    assert "X-Amz-Signature=" in upload["upload_url"]
    lines = {"logs": [{"ts": "2026-01-01T00:00:00Z", "level": "info", "msg": "Task started", "marker": "start"}]}
    assert client.url("POST", upload["upload_url"], json=lines).json() == {"accepted": 1}
    tampered = upload["upload_url"].replace("X-Amz-Signature=", "X-Amz-Signature=00")
    assert client.url("POST", tampered, json=lines).status_code == 403

    done = client.request("PATCH", names.API, f"/v1/workflows/runs/{run['id']}", headers=AGENT,
                          json={"status": "RUN_STATUS_COMPLETED"})
    assert done.json()["status"] == "RUN_STATUS_COMPLETED"
    assert client.request("DELETE", names.API, "/v1/workflows", headers=AGENT).status_code == 405
    assert client.request("GET", names.API, "/v1/nothing-here", headers=AGENT).status_code == 404


def test_cloud_upload_path_hands_out_a_presigned_put(fresh: Simulation, client: SimClient) -> None:
    project_id = _project_id(client)
    handed = client.request("POST", names.API, f"/projects/{project_id}/artifacts", headers=AGENT,
                            json={"filename": "train.csv"}).json()["data"]
    assert handed["method"] == "PUT" and handed["url"].startswith(f"https://{names.ARTIFACTS}/{project_id}/uploads/")
    assert client.url("PUT", handed["url"], content=b"a,b\n1,2\n").status_code == 200
    assert fresh.received_by(names.ARTIFACTS)[-1].body == b"a,b\n1,2\n"


def test_artifacts_presigned_get(fresh: Simulation, client: SimClient) -> None:
    handed = client.request("GET", names.ARTIFACTS, "/base_models/actgan/v1/base.tar.gz").json()["data"]
    assert handed["url"].startswith(f"https://{names.ARTIFACTS}/objects/actgan/v1/base.tar.gz?X-Amz-Algorithm=")
    got = client.url("GET", handed["url"])
    assert got.status_code == 200 and got.content == payloads.base_model_blob()
    assert client.url("GET", handed["url"].split("?")[0]).status_code == 403
    assert client.request("GET", names.ARTIFACTS, "/base_models/none").status_code == 404


def test_registry_pull_through_layer_bucket(fresh: Simulation, client: SimClient) -> None:
    ping = client.request("GET", names.REGISTRY, "/v2/")
    assert ping.status_code == 401 and ping.headers["WWW-Authenticate"].startswith("Basic realm=")
    password = fresh.state.registry_password
    auth = httpx.BasicAuth("AWS", password)
    assert client.request("GET", names.REGISTRY, "/v2/", auth=auth).status_code == 200

    manifest = client.request("GET", names.REGISTRY, f"/v2/{names.REGISTRY_REPO}/manifests/{names.IMAGE_TAG}", auth=auth)
    assert manifest.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest.headers["Docker-Content-Digest"] == payloads.sha256_digest(manifest.content)
    layer = manifest.json()["layers"][0]
    blob = client.request("GET", names.REGISTRY, f"/v2/{names.REGISTRY_REPO}/blobs/{layer['digest']}", auth=auth)
    assert blob.status_code == 307
    location = blob.headers["Location"]
    assert location.startswith(f"https://{names.LAYER_BUCKET_HOST}/") and "X-Amz-Signature=" in location
    data = client.url("GET", location)
    assert data.status_code == 200 and payloads.sha256_digest(data.content) == layer["digest"]
    assert len(data.content) == layer["size"]

    assert client.url("PUT", location, content=b"x").status_code == 403  # layer bucket is read-only
    assert client.url("GET", location.split("?")[0]).status_code == 403  # unsigned
    push = client.request("PUT", names.REGISTRY, f"/v2/{names.REGISTRY_REPO}/manifests/evil", auth=auth, content=b"{}")
    assert push.status_code == 403
    assert client.request("GET", names.REGISTRY, "/v2/other/repo/manifests/x", auth=auth).status_code == 404


def test_s3_buckets(fresh: Simulation, client: SimClient) -> None:
    key = f"/sources/{names.PROJECT_NAME}/train.csv"
    url = f"https://{names.CUSTOMER_BUCKET_HOST}{key}"
    assert client.request("GET", names.CUSTOMER_BUCKET_HOST, key).status_code == 403  # unsigned
    signed = client.request("GET", names.CUSTOMER_BUCKET_HOST, key, headers=sigv4_headers("GET", url, b""))
    assert signed.content == payloads.training_csv()
    put = client.request("PUT", names.CUSTOMER_BUCKET_HOST, "/p/model/m/model.tar.gz",
                         headers=sigv4_headers("PUT", url, b"abc"), content=b"abc")
    assert put.status_code == 200 and put.headers["ETag"] == f'"{hashlib.md5(b"abc").hexdigest()}"'
    assert fresh.state.objects[(names.CUSTOMER_BUCKET, "p/model/m/model.tar.gz")] == b"abc"

    # Path-style on the shared host: the bucket is the first path segment.
    client.request("PUT", names.S3_GLOBAL, f"/{names.FOREIGN_BUCKET}/dump.csv", content=b"rows")
    assert fresh.state.objects[(names.FOREIGN_BUCKET, "dump.csv")] == b"rows"
    missing = client.request("GET", names.S3_REGIONAL, "/some-bucket/none")
    assert missing.status_code == 404 and b"<Code>NoSuchKey</Code>" in missing.content
    assert client.request("GET", names.S3_GLOBAL, "/").status_code == 400


def test_foreign_host_and_fronting_are_recorded(fresh: Simulation, client: SimClient) -> None:
    assert client.request("POST", names.FOREIGN, "/v1/collect", content=b"hello").json() == {"received": 5}
    # SNI and connection say api.gretel.cloud; the Host header says the collector.
    ip, port = fresh.hosts[names.API]
    fronted = client.client.post(f"https://{ip}:{port}/v1/collect", headers={"Host": names.FOREIGN}, content=b"x",
                                 extensions={"sni_hostname": names.API})
    assert fronted.status_code == 202
    record = fresh.received[-1]
    assert (record.server, record.sni, record.http_host, record.answered_as) == (
        names.API, names.API, names.FOREIGN, names.FOREIGN)
    assert record.method == "POST" and record.path == "/v1/collect" and record.body == b"x"
    assert record.listen_ip == ip and record.client_ip == "127.0.0.1"


def test_every_request_is_recorded_with_query_and_body(fresh: Simulation, client: SimClient) -> None:
    before = len(fresh.received)
    client.request("POST", names.API, "/jobs/receive_one", headers=AGENT, params={"runner_modes": "hybrid", "x": "1"})
    client.request("GET", names.ARTIFACTS, "/nothing")
    new = fresh.received[before:]
    assert [(r.server, r.method, r.path, r.status) for r in new] == [
        (names.API, "POST", "/jobs/receive_one", 200), (names.ARTIFACTS, "GET", "/nothing", 404)]
    assert new[0].query == "runner_modes=hybrid&x=1"
    assert ("Authorization", names.API_KEY) in new[0].headers or ("authorization", names.API_KEY) in new[0].headers
    assert [r.seq for r in new] == sorted(r.seq for r in new)
    assert fresh.received_by(names.ARTIFACTS)[-1].path == "/nothing"


def test_certificates_cover_names_and_addresses(sim: Simulation) -> None:
    ctx = ssl.create_default_context(cafile=str(sim.ca_cert_path))
    for host, (ip, port) in sim.hosts.items():
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.getpeercert()["subject"] == ((("commonName", host),),)
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=ip):
            pass  # IP SAN: a client that dials the address itself still verifies
    assert (sim.ca.key_path.stat().st_mode & 0o777) == 0o600


def test_untrusting_client_and_garbage_are_survived(sim: Simulation, client: SimClient) -> None:
    ip, port = sim.hosts[names.API]
    with socket.create_connection((ip, port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(raw, server_hostname=names.API)  # does not trust the sim CA
    with socket.create_connection((ip, port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plaintext to a TLS port
        with contextlib.suppress(OSError):
            assert not raw.recv(100).startswith(b"HTTP")
    ctx = ssl.create_default_context(cafile=str(sim.ca_cert_path))
    with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=names.API) as tls:
        tls.sendall(b"POST /projects HTTP/1.1\r\nHost: api.gretel.cloud\r\nContent-Length: 999999999999\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 413")
    failures = [f for f in sim.handshake_failures if f.server == names.API]
    assert len(failures) >= 2
    assert any(f.sni == names.API for f in failures)  # the client that rejected our CA named the host
    assert client.request("GET", names.API, "/users/me/billing", headers=AGENT).status_code == 200


def test_chunked_body_is_read(fresh: Simulation, client: SimClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked",'
        yield b' "runner_mode": "hybrid"}'

    r = client.request("POST", names.API, "/projects", headers=AGENT, content=chunks())
    assert r.status_code == 200 and r.json()["data"]["project"]["name"] == "chunked"
    assert fresh.received[-1].body == b'{"name": "chunked", "runner_mode": "hybrid"}'


def test_stop_closes_every_listener(tmp_path: Path) -> None:
    sim = Simulation.start(tmp_path / "ca")
    addresses = list(sim.hosts.values())
    sim.stop()
    sim.stop()  # idempotent
    for ip, port in addresses:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=1).close()


def test_well_known_ports_and_address_overrides(tmp_path: Path) -> None:
    """What the demo uses so sensors see real ports: HTTPS on 443 of each address, DNS on 53."""
    moved = {names.FOREIGN: "127.0.0.28"}
    with Simulation.start(tmp_path / "ca", https_port=443, dns_port=53, dns_ip="127.0.0.20", addresses=moved) as sim:
        assert sim.hosts[names.API] == ("127.0.0.11", 443) and sim.hosts[names.FOREIGN] == ("127.0.0.28", 443)
        assert sim.dns_address == ("127.0.0.20", 53)
        assert f"{names.API}:443:127.0.0.11:443" in sim.connect_to()
        assert query_a(sim.dns_address, names.FOREIGN) == ("NOERROR", ["127.0.0.28"])
        r = SimClient(sim).request("GET", names.FOREIGN, "/")
        assert r.status_code == 200 and r.text == "ok\n"
    with pytest.raises(AuditorError, match="unknown simulated host 'evil.example'"):
        Simulation.start(tmp_path / "ca2", addresses={"evil.example": "127.0.0.99"})


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.11", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(AuditorError, match=f"cannot listen on 127.0.0.11:{port} for {names.API}"):
            Simulation.start(tmp_path / "ca", https_port=port)


def test_site_overlay_composes_with_the_shipped_pack(sim: Simulation, tmp_path: Path) -> None:
    pack = load_pack(None, [sim.write_site_overlay(tmp_path / "site.yaml")])
    assert [b.uri for b in pack.site.buckets] == [f"s3://{names.CUSTOMER_BUCKET}/"]
    assert pack.site.registry_region == names.REGION
    assert pack.site.pod_cidrs == ["127.0.2.0/24"] and pack.site.node_cidrs == ["127.0.3.0/24"]
