"""Rule packs and the policy: load and compose packs, match destinations, judge events.

    from auditor.rules import load_pack, evaluate, judge, group_findings
    pack = load_pack()                      # the shipped Gretel Hybrid pack
    decision = evaluate(event, pack)        # pure; None for sensor records
"""

from auditor.rules.pack import Endpoint, Pack, PackSource, Rule, Site, load_pack, shipped_path
from auditor.rules.policy import destination_label, evaluate, group_findings, judge

__all__ = [
    "Endpoint",
    "Pack",
    "PackSource",
    "Rule",
    "Site",
    "destination_label",
    "evaluate",
    "group_findings",
    "judge",
    "load_pack",
    "shipped_path",
]
