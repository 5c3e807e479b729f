"""Adapters layer: local authorisation (OCPP 1.6 §3.5): the local list and the cache.

The local list is what the CSMS sends with SendLocalList (Full or Differential, versioned);
the cache is every IdTagInfo the CSMS answered (Authorize, StartTransaction,
StopTransaction). The list takes priority over the cache. Both are stored in the state file
(``ocpp_state``) on every change, so offline authorisation works after a restart too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.store.ocpp import OcppStore

LIST_DOC = "local_list"
CACHE_DOC = "auth_cache"
CACHE_MAX = 10_000  # entries; the oldest go first


@dataclass(frozen=True, slots=True, kw_only=True)
class IdTagInfo:
    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx
    expiry_date: str | None = None  # RFC 3339 as the CSMS sent it
    parent_id_tag: str | None = None

    @classmethod
    def from_ocpp(cls, info: Mapping[str, Any]) -> IdTagInfo:
        return cls(
            status=str(info.get("status", "Invalid")),
            expiry_date=info.get("expiryDate"),
            parent_id_tag=info.get("parentIdTag"),
        )

    def to_ocpp(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.expiry_date is not None:
            out["expiryDate"] = self.expiry_date
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    def at(self, now: datetime) -> IdTagInfo:
        """The info as it stands at ``now``: an Accepted tag past its expiry is Expired."""
        if self.status == "Accepted" and self.expiry_date is not None:
            try:
                expiry = datetime.fromisoformat(self.expiry_date.replace("Z", "+00:00"))
            except ValueError:
                return self
            if expiry.utcoffset() is not None and expiry <= now:
                return IdTagInfo(
                    status="Expired",
                    expiry_date=self.expiry_date,
                    parent_id_tag=self.parent_id_tag,
                )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    info: IdTagInfo
    source: str  # "local_list" or "cache"


class LocalAuth:
    """The local list and the authorisation cache of a site (shared by its charge points)."""

    def __init__(self, store: OcppStore) -> None:
        self._store = store
        doc = store.load(LIST_DOC) or {}
        self.version: int = int(doc.get("version", 0))
        self._list: dict[str, IdTagInfo] = {
            tag: IdTagInfo.from_ocpp(info) for tag, info in doc.get("entries", {}).items()
        }
        cache = store.load(CACHE_DOC) or {}
        self._cache: dict[str, IdTagInfo] = {
            tag: IdTagInfo.from_ocpp(info) for tag, info in cache.items()
        }

    def lookup(
        self, id_tag: str, now: datetime, *, use_list: bool, use_cache: bool
    ) -> Found | None:
        if use_list and id_tag in self._list:
            return Found(info=self._list[id_tag].at(now), source=LIST_DOC)
        if use_cache and id_tag in self._cache:
            return Found(info=self._cache[id_tag].at(now), source=CACHE_DOC)
        return None

    def remember(self, id_tag: str, info: IdTagInfo) -> None:
        """An IdTagInfo from the CSMS goes into the cache (StoreError: not stored)."""
        if self._cache.get(id_tag) == info:
            return
        self._cache.pop(id_tag, None)
        self._cache[id_tag] = info
        while len(self._cache) > CACHE_MAX:
            del self._cache[next(iter(self._cache))]
        self._store.save(CACHE_DOC, {t: i.to_ocpp() for t, i in self._cache.items()})

    def clear_cache(self) -> None:
        self._store.save(CACHE_DOC, {})
        self._cache = {}

    @property
    def list_size(self) -> int:
        return len(self._list)

    def update(
        self,
        *,
        version: int,
        update_type: str,
        entries: Iterable[Mapping[str, Any]],
        max_length: int,
    ) -> str:
        """SendLocalList: the SendLocalList.conf status (Accepted, Failed, VersionMismatch)."""
        items = list(entries)
        if update_type == "Full":
            new = {
                str(e["idTag"]): IdTagInfo.from_ocpp(e["idTagInfo"])
                for e in items
                if e.get("idTagInfo") is not None
            }
        else:
            if version <= self.version:
                return "VersionMismatch"
            new = dict(self._list)
            for e in items:
                if e.get("idTagInfo") is None:
                    new.pop(str(e["idTag"]), None)
                else:
                    new[str(e["idTag"])] = IdTagInfo.from_ocpp(e["idTagInfo"])
        if len(new) > max_length:
            return "Failed"
        self._store.save(
            LIST_DOC, {"version": version, "entries": {t: i.to_ocpp() for t, i in new.items()}}
        )
        self._list, self.version = new, version
        return "Accepted"
