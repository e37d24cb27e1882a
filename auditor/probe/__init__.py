"""The in-cluster probe: every flow, DNS lookup and TLS/QUIC server name on a node,
live or from a capture file, as EgressEvents in the store, including what went
around the proxy.

    from auditor.probe import run_pcap, run_live, events_from_pcap, proxy_coverage
    summary = run_pcap("capture.pcapng.gz", "evidence.db", pack=pack)
    coverage = proxy_coverage(store)          # matched share of external flows
"""

from auditor.probe.coverage import ProxyCoverage, proxy_coverage
from auditor.probe.engine import Probe, ProbeConfig
from auditor.probe.runner import ProbeSummary, config_from_pack, events_from_pcap, run_live, run_pcap

__all__ = [
    "Probe",
    "ProbeConfig",
    "ProbeSummary",
    "ProxyCoverage",
    "config_from_pack",
    "events_from_pcap",
    "proxy_coverage",
    "run_live",
    "run_pcap",
]
