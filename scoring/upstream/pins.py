"""Pinned model versions for experiment arms: ``ctr@20261122.1``, and the version canary
``ctr@next`` (the newest installed version not yet promoted).

A pinned version is loaded beside the live one (validate, lay out, warm: the registry's loader)
on the registry's worker thread, after every poll, at its idle priority; a request never waits
for it. Until it is loaded, or when there is nothing to pin (``@next`` with the live version the
newest; a version not in the repository), the arm is served by the model's live version, and
the response's ``version`` says so. A pin that resolves to the live version shares it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable

from ..lifecycle.loader import LiveModel
from ..lifecycle.registry import Registry
from .layers import NEXT, ModelRef

log = logging.getLogger(__name__)


class VersionPins:
    def __init__(self, registry: Registry, pins: Iterable[ModelRef] = ()) -> None:
        self.registry = registry
        self._pins: frozenset[ModelRef] = frozenset()
        self._loaded: dict[ModelRef, LiveModel] = {}
        self._resolved: dict[ModelRef, str | None] = {}
        # (model, version) -> (files' fingerprint, why): not tried again until the files change
        # or an operator's reload of the model clears it
        self._failed: dict[tuple[str, str], tuple[str, str]] = {}
        self._guard = threading.Lock()
        self.set(pins)
        registry.pollers.append(self.refresh)
        registry.on_abort.append(self.forget)
        registry.on_reload.append(self.clear_failures)

    def set(self, pins: Iterable[ModelRef]) -> None:
        """The pins of the models config now in force (a reload may change them). Waits for a
        load under way (the config watcher's thread, never a request's)."""
        with self._guard:
            self._pins = frozenset(pins)
            self.registry.canary = frozenset(p.name for p in self._pins if p.version == NEXT)
            self._loaded = {r: m for r, m in self._loaded.items() if r in self._pins}

    def forget(self, name: str, version: str) -> None:
        """An aborted version leaves its arm at once in this process (a request thread: no
        lock, one dictionary replaced); the other workers drop it at their next poll."""
        self._resolved = {r: (None if r.name == name and v == version else v)
                          for r, v in self._resolved.items()}
        self._loaded = {r: m for r, m in self._loaded.items()
                        if not (r.name == name and m.version == version)}

    def clear_failures(self, name: str) -> None:
        for key in [k for k in self._failed if k[0] == name]:
            self._failed.pop(key, None)

    def get(self, ref: ModelRef) -> LiveModel | None:
        """The loaded pinned version (or the live one when the pin is the live version); None
        while there is none: the caller serves the live version."""
        model = self._loaded.get(ref)
        if model is not None:
            return model
        version = self._resolved.get(ref)
        live = self.registry.live(ref.name)
        if live is not None and version is not None and live.version == version:
            return live
        return None

    def resolve(self, ref: ModelRef) -> str | None:
        repo = self.registry.repo
        if ref.version == NEXT:
            return self.registry.canary_version(ref.name)
        state = repo.observe(ref.name)
        if ref.version in repo.versions(ref.name, state) and \
                not repo.is_rejected(ref.name, ref.version, state):
            return ref.version
        return None

    def refresh(self) -> None:
        """Resolve every pin again and load what changed (on the registry's worker)."""
        with self._guard:
            for ref in sorted(self._pins, key=str):
                try:
                    version = self.resolve(ref)
                except Exception:
                    log.exception("pin %s: cannot resolve", ref)
                    continue
                self._resolved[ref] = version
                live = self.registry.live(ref.name)
                current = self._loaded.get(ref)
                if version is None or (live is not None and live.version == version):
                    if current is not None:
                        log.info("pin %s: now %s; the pinned copy is released", ref,
                                 "the live version" if version else "nothing to pin")
                        self._loaded = {r: m for r, m in self._loaded.items() if r != ref}
                    continue
                if current is not None and current.version == version:
                    continue
                failed = self._failed.get((ref.name, version))
                if failed is not None and failed[0] == self.registry.repo.fingerprint(ref.name, version):
                    continue  # the same files failed before
                shared = next((m for r, m in self._loaded.items()
                               if r.name == ref.name and m.version == version), None)
                if shared is None:
                    shared = self._load(ref, version)
                if shared is not None and ref in self._pins:
                    self._loaded = {**self._loaded, ref: shared}
                elif current is not None:  # the pin moved on and its new version failed
                    self._loaded = {r: m for r, m in self._loaded.items() if r != ref}

    def _load(self, ref: ModelRef, version: str) -> LiveModel | None:
        reg = self.registry
        log.info("pin %s: loading version %r for its experiment arm", ref, version)
        fingerprint = reg.repo.fingerprint(ref.name, version)
        try:
            model = reg.loader(ref.name, version, str(reg.repo.path(ref.name, version)))
            reason = reg.overflowed(model)  # the check the registry makes before a version serves
        except Exception as exc:
            model, reason = None, f"{type(exc).__name__}: {exc}"
        if reason is None:
            return model
        self._failed[(ref.name, version)] = (fingerprint, reason)
        log.error("pin %s: version %r failed to load; its arm serves the live version: %s",
                  ref, version, reason)
        return None

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for ref in sorted(self._pins, key=str):
            loaded = self.get(ref)
            version = self._resolved.get(ref)
            failed = self._failed.get((ref.name, version)) if version else None
            out.append({"pin": str(ref), "version": version,
                        "serving": loaded.version if loaded is not None else None,
                        "error": failed[1] if failed else None})
        return out
