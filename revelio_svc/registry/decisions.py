"""Promotion decisions as history: one tag per event, never one tag overwritten.

Every decision about a registered version (registered as champion or challenger and why, promoted by hand,
replaced as champion by another version) adds a tag `decision.<UTC time>` to that version and one to its
registered model (`decision.<UTC time>` = `version N: …`), so the model's tags read as a log of how
`champion` moved. `champion_decision` keeps the latest decision of a version in words (what a reader of the
version wants first). Keys sort in time order: `decision.2026-12-06T07-30-12.123456Z`.
"""
from __future__ import annotations

from datetime import datetime, timezone

LATEST_TAG = "champion_decision"
HISTORY_PREFIX = "decision."
_VALUE_LIMIT = 5000


def history_key(when: datetime | None = None) -> str:
    t = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return HISTORY_PREFIX + t.strftime("%Y-%m-%dT%H-%M-%S.%fZ")


def _free_key(existing: dict[str, str], when: datetime | None) -> str:
    key = history_key(when)
    n = 1
    while key in existing:  # two events within one microsecond (or a clock step back): keep both
        key = f"{history_key(when)}-{n}"
        n += 1
    return key


def record_decision(client, name: str, version: str | int, text: str, *, latest: bool = True,
                    when: datetime | None = None) -> str:
    """Add one decision event to version `version` of `name` and to the model's log; returns its key.

    `latest=False` leaves `champion_decision` as it is (an event about the version, such as being replaced
    as champion, that is not a decision to register or promote it)."""
    version = str(version)
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    mv_tags = dict(client.get_model_version(name, version).tags or {})
    key = _free_key(mv_tags, when)
    client.set_model_version_tag(name, version, key, f"{stamp}: {text}"[:_VALUE_LIMIT])
    if latest:
        client.set_model_version_tag(name, version, LATEST_TAG, text[:500])
    rm_tags = dict(client.get_registered_model(name).tags or {})
    client.set_registered_model_tag(name, _free_key(rm_tags, when),
                                    f"{stamp}: version {version}: {text}"[:_VALUE_LIMIT])
    return key


def decision_history(tags: dict[str, str]) -> list[tuple[str, str]]:
    """(key, text) of the decision events among a version's or a model's tags, oldest first."""
    return sorted((k, v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX))
