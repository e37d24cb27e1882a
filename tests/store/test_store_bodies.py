"""`event_bodies`: what `events` reads, undecoded, on both backends."""

from __future__ import annotations

from datetime import timedelta

from auditor.model import EgressEvent
from auditor.store.base import open_store
from auditor.store.chain import canonical_json, json_doc

from .conftest import T0, make_events


def test_event_bodies_are_the_stored_canonical_json_in_event_order(store_url: str) -> None:
    store = open_store(store_url)
    try:
        late = make_events("proxy-b", 3, start=T0 + timedelta(seconds=30), tag="late")
        early = make_events("proxy-a", 4)
        store.append(late)
        store.append(early)
        bodies = list(store.event_bodies())
        assert all(type(b) is bytes for b in bodies)
        assert [EgressEvent.model_validate_json(b) for b in bodies] == list(store.events())
        written = {e.id: canonical_json(json_doc(e)) for e in late + early}
        assert [written[EgressEvent.model_validate_json(b).id] for b in bodies] == bodies
        window = list(store.event_bodies(T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)))
        assert [EgressEvent.model_validate_json(b).id for b in window] == [e.id for e in store.events(T0 + timedelta(minutes=1), T0 + timedelta(minutes=3))]
        assert len(window) == 4
    finally:
        store.close()
