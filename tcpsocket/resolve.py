"""Name lookups for sessions, bounded; and connecting to exactly the checked addresses.

Lookups go through :attr:`ServerConfig.resolver`, or, if it is None, through
``getaddrinfo`` on the daemon's own thread pool (not the reactor's shared
one).  Each session, and the daemon in total, may have a bounded number of
lookups in progress; a lookup holds its slot until the resolver answers, even
after its ``open`` has timed out, so lookups that never answer use up only
their own session's slots (and, in total, at most the global cap).
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from tcpsocket._private import GAIResolver

__all__ = ["CheckedNames", "FixedResolver", "LookupRefused", "Lookups"]


class LookupRefused(Exception):
    """A lookup was not started (a cap) or found nothing; the message says why."""


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: the answer is already known."""


@implementer(IResolutionReceiver)
class _Collect:
    """Gathers one resolution's addresses (canonical text, first seen first)."""

    def __init__(self, done: Any) -> None:
        self.addresses: list[str] = []
        self._done = done

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            text = str(ipaddress.ip_address(address.host.split("%", 1)[0]))
            if text not in self.addresses:
                self.addresses.append(text)

    def resolutionComplete(self) -> None:
        self._done(self.addresses)


class Lookups:
    """Bounded name lookups: ``per_owner`` at a time per session, ``total`` in all."""

    def __init__(
        self,
        reactor: Any,
        resolver: IHostnameResolver | None,
        per_owner: int,
        total: int,
        getaddrinfo: Any = socket.getaddrinfo,
    ) -> None:
        self._reactor = reactor
        self.per_owner = per_owner
        self.total = total
        self.in_progress = 0
        self._by_owner: Counter[object] = Counter()
        self._pool: ThreadPool | None = None
        self._resolver = resolver or GAIResolver(
            reactor, getThreadPool=self._thread_pool, getaddrinfo=getaddrinfo
        )

    def _thread_pool(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self.total, name="tcpsocket-lookups")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return self._pool

    def stop(self) -> None:
        """Stop the lookup threads (done at reactor shutdown)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def lookup(self, owner: object, name: str, port: int) -> Deferred[list[str]]:
        """The addresses ``name`` resolves to; fails with :class:`LookupRefused`.

        Cancelling the Deferred gives up waiting, not the slot: that stays
        taken until the resolver answers.
        """
        if self._by_owner[owner] >= self.per_owner:
            raise LookupRefused(
                f"too many name lookups in progress in this session (limit {self.per_owner})"
            )
        if self.in_progress >= self.total:
            raise LookupRefused(f"too many name lookups in progress (daemon limit {self.total})")
        self.in_progress += 1
        self._by_owner[owner] += 1
        result: Deferred[list[str]] = Deferred()

        def done(addresses: list[str]) -> None:
            self.in_progress -= 1
            self._by_owner[owner] -= 1
            if not self._by_owner[owner]:
                del self._by_owner[owner]
            if result.called:
                return
            if addresses:
                result.callback(addresses)
            else:
                result.errback(LookupRefused(f"no address found for {name}"))

        self._resolver.resolveHostName(_Collect(done), name, port)
        return result


@implementer(IHostnameResolver)
class FixedResolver:
    """Answers ``name`` (None: any name) with ``addresses``, and other names with nothing."""

    def __init__(self, name: str | None, addresses: Sequence[str]) -> None:
        self._name = name
        self._addresses = addresses

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if self._name is None or hostName.lower() == self._name:
            for text in self._addresses:
                kind = IPv6Address if ":" in text else IPv4Address
                if addressTypes is None or kind in addressTypes:
                    resolutionReceiver.addressResolved(kind("TCP", text, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class CheckedNames:
    """The reactor, except that its name resolver knows only the checked addresses.

    Given to :attr:`ServerConfig.connect` with a host name, so that a
    ``HostnameEndpoint`` (Happy Eyeballs) connects to those addresses and
    makes no second lookup.
    """

    def __init__(self, reactor: Any, name: str, addresses: Sequence[str]) -> None:
        self._reactor = reactor
        self.nameResolver: IHostnameResolver = FixedResolver(name.lower(), addresses)

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("the checked addresses are fixed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
