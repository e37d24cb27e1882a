"""Red flag 10 across a restart: a proxy that starts between two get_login answers
(the agent asks hourly) reads the one in force from the store it writes to."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx

from auditor.model import Decision, Destination, EgressEvent, HttpInfo
from auditor.sim.ca import ThrowawayCA
from auditor.store.base import open_store

from .conftest import API, FOREIGN, REGISTRY, Upstream, events_of, proxy_config, running_proxy


def test_a_restarted_proxy_judges_pulls_against_the_answer_its_store_holds(
    tmp_path: Path, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream
) -> None:
    config = proxy_config(tmp_path, proxy_confdir, test_ca, overlays=[overlay_file])
    earlier = EgressEvent(
        sensor_id="proxy-test", kind="http",
        destination=Destination(host=API, sni=API, port=443, tls=True),
        http=HttpInfo(method="GET", scheme="https", path="/opt/containers/get_login", status=200, login_registry=REGISTRY),
        decision=Decision(action="allowed", rule_id="allow.gretel-api"),
    )
    st = open_store(str(config.store))
    st.append([earlier])
    st.close()
    with running_proxy(config) as proxy:
        with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10) as c:
            assert c.get(f"https://{FOREIGN}/v2/gretelai/models-tabular/manifests/v1").status_code == 200
        deadline = time.monotonic() + 10
        while not (pulls := [e for e in events_of(proxy.store) if e.http is not None and e.http.path.startswith("/v2/")]):
            assert time.monotonic() < deadline, "the pull was not recorded"
            time.sleep(0.05)
    assert "registry-not-named" in pulls[0].observations and f"get_login named {REGISTRY}" in pulls[0].notes
