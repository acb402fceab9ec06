"""Where live data comes from: a replay of files or an SDS archive, or a SeedLink server."""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import obspy
from obspy import UTCDateTime

from .common import RealtimeError, parse_streams

logger = logging.getLogger("seisbench_feq.realtime")


class Source:
    """Delivers ObsPy traces (a record or a few seconds each) to a callable, from its own thread.

    Subclasses implement :meth:`run` (block until the data ends or :meth:`stop`) and may implement
    :meth:`data_time_to_wall` (the wall time at which a data time "happened" on this source's clock;
    ``None``: unknown, the picker then uses the arrival of the record holding that sample).
    """

    name = "source"
    #: True when the end of :meth:`run` is the normal end of the data (a replay, a server's END)
    ended_normally = False

    def __init__(self) -> None:
        self._stop = threading.Event()

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        return None


class ReplaySource(Source):
    """Replays MiniSEED files or an SDS archive in time order at ``speed`` x wall clock.

    ``paths``: files, folders (searched recursively for MiniSEED) or an SDS root, read through
    :mod:`seisbench_feq.io.sources` (ObsPy's SDS client, indexed MiniSEED files). The data is
    cut into pieces of ``record_seconds`` (about one 512-byte record) delivered in end-time
    order, the moment a digitiser could have sent them. ``speed=1`` is real time, ``speed=0`` as
    fast as possible. ``streams`` (NET.STA.LOC.CHA patterns) and ``start``/``end`` select what is
    replayed; without ``start``/``end`` the data's own span is replayed (as ``pick`` does).
    """

    name = "replay"

    def __init__(self, paths: str | Path | Sequence[str | Path], *, streams=None, start=None,
                 end=None, speed: float = 1.0, record_seconds: float = 5.0):
        super().__init__()
        from ..io.sources import SourceError, open_source

        if isinstance(paths, (str, Path)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        for path in paths:
            if not path.exists():
                raise RealtimeError(f"replay: {path} does not exist")
        self.streams = parse_streams(streams)
        self.start = _time(start, "start")
        self.end = _time(end, "end")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise RealtimeError(f"replay: end {self.end} is not after start {self.start}")
        if speed < 0:
            raise RealtimeError(f"speed={speed}: use a positive factor (1 = real time) or 0 (no waiting)")
        self.speed = float(speed)
        self.record_seconds = float(record_seconds)
        try:
            self.source = open_source([str(p) for p in paths] if len(paths) > 1 else str(paths[0]))
        except SourceError as exc:
            raise RealtimeError(f"replay: {exc}") from None
        stations = self._stations()
        if not stations:
            raise RealtimeError(f"replay: no MiniSEED data found in {[str(p) for p in paths]}"
                                + (f" for streams {streams}" if streams else ""))
        self._wall0: float | None = None
        self._t0: float | None = None

    @property
    def files(self) -> list[str]:
        return self.source.files()

    def _stations(self) -> list[str]:
        if not self.streams:
            return self.source.stations()
        return [s for s in self.source.stations()
                if any(fnmatch.fnmatch(s, ".".join(p[:3])) for p in self.streams)]

    def _wanted(self, trace: obspy.Trace) -> bool:
        if not self.streams:
            return True
        return any(fnmatch.fnmatch(trace.id.upper(), ".".join(p).upper()) for p in self.streams)

    def records(self) -> Iterator[obspy.Trace]:
        """Selected pieces of all stations, merged in end-time order (no waiting)."""
        from ..io.sources import SourceError, replay_records

        try:
            for trace in replay_records(self.source, start=self.start, end=self.end,
                                        stations=self._stations(),
                                        record_seconds=self.record_seconds):
                if self._wanted(trace):
                    yield trace
        except SourceError as exc:
            raise RealtimeError(f"replay: {exc}") from None

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        for trace in self.records():
            if self._stop.is_set():
                return
            end = trace.stats.endtime.timestamp + trace.stats.delta  # the record exists from here
            if self._wall0 is None:
                self._wall0, self._t0 = time.time(), end
            if self.speed > 0:
                delay = self._wall0 + (end - self._t0) / self.speed - time.time()
                if delay > 0 and self._stop.wait(delay):
                    return
            deliver(trace)
        self.ended_normally = True

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        if self.speed <= 0 or self._wall0 is None:
            return None
        return self._wall0 + (UTCDateTime(t).timestamp - self._t0) / self.speed


def _time(value, what):
    if value is None:
        return None
    try:
        return UTCDateTime(value)
    except Exception:
        raise RealtimeError(f"cannot understand {what} time {value!r}: give a UTC date or time "
                            "such as 2014-05-01 or 2014-05-01T01:30:00") from None


class ConnectionEnded(Exception):
    """The SeedLink server ended a streaming connection: ``clean`` for a close (TCP FIN), else a
    reset or read error. Not an ``OSError``, so that it reaches :meth:`SeedLinkSource.run` (ObsPy
    would log an ERROR and reconnect by itself)."""

    def __init__(self, message: str, clean: bool):
        super().__init__(message)
        self.clean = clean


def _seedlink_connection_class():
    """ObsPy's SeedLinkConnection with three fixes a long-running client needs (ObsPy 1.5.1)."""
    from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
    from obspy.clients.seedlink.client.slstate import SLState
    from obspy.clients.seedlink.seedlinkexception import SeedLinkException

    class _Connection(SeedLinkConnection):
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def is_connected(self, timeout=1.0):
            # connect() passes self.timeout, None by default, which ObsPy 1.5.1 compares with a float
            return super().is_connected(1.0 if timeout is None else timeout)

        def receive_data(self, maxbytes, code):
            streaming = self.state.state == SLState.SL_DATA
            try:
                data = super().receive_data(maxbytes, code)
            except OSError as exc:
                if streaming:
                    raise ConnectionEnded(f"connection lost ({exc})", clean=False) from exc
                raise
            # recv() returns b"" only when the server closed the socket (it blocks up to netto
            # otherwise); ObsPy treats it as "no data yet" and would wait for the network timeout
            if data == b"" and maxbytes > 0:
                if streaming:
                    raise ConnectionEnded("the server closed the connection", clean=True)
                raise ConnectionResetError("the SeedLink server closed the connection")
            return data

        def connect(self):
            self.owner.connect_attempts += 1
            self.owner.records_this_connection = 0
            if self.owner.connect_attempts > 1:
                level = logging.INFO if self.owner.closed_cleanly else logging.WARNING
                logger.log(level, "SeedLink %s: reconnecting (attempt %d); resuming %s", self.sladdr,
                           self.owner.connect_attempts,
                           ", ".join(f"{s.net}.{s.station} after #{s.seqnum}" for s in self.streams))
            super().connect()

        def update_stream(self, slpacket):
            try:
                super().update_stream(slpacket)
            except SeedLinkException as exc:
                self.owner.bad_records += 1
                logger.warning("SeedLink %s: malformed packet skipped (%s)", self.sladdr, exc)
                raise

    return _Connection


class SeedLinkSource(Source):
    """Live data through ObsPy's SeedLink client (``EasySeedLinkClient`` + ``SeedLinkConnection``).

    ``streams``: NET.STA.LOC.CHA patterns (``?``/``*`` in LOC.CHA become SeedLink selectors).
    When the connection drops, the client reconnects after ``backoff_initial`` s, doubling up to
    ``backoff_max`` s while attempts fail, and resumes each station after the last sequence number
    it received (``DATA <seq+1>``), so nothing that the server still holds is lost. ``netto``: a
    connection silent this long is re-opened; ``keepalive``: INFO ID every so many seconds (0: off).
    ``statefile``: ObsPy's state file, to resume across restarts.
    """

    name = "seedlink"

    def __init__(self, address: str, streams, *, netto: float = 60.0, keepalive: float = 20.0,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0, statefile: str | None = None):
        super().__init__()
        self.address = address.replace("seedlink://", "")
        if ":" not in self.address:
            self.address += ":18000"
        self.streams = parse_streams(streams)
        if not self.streams:
            raise RealtimeError("SeedLink needs --stations (e.g. CX.PB01) or streams (e.g. CX.PB01..HH?)")
        self.netto, self.keepalive = netto, keepalive
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.statefile = statefile
        self.connect_attempts = 0
        self.records_this_connection = 0
        self.closed_cleanly = False  # the last connection was closed by the server (FIN)
        self.bad_records = 0
        self.failures: list[tuple[float, str]] = []  # (wall time, reason) of failed attempts
        self._client = None

    def _retry(self, conn, failures: int, message: str) -> None:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** failures)
        self.failures.append((time.time(), message))
        logger.warning("SeedLink %s: %s; next attempt in %.1f s", self.address, message, delay)
        conn.disconnect()
        self._stop.wait(delay)

    def _connection_ended(self, conn, exc: ConnectionEnded) -> bool:
        """A streaming connection ended; True when that is the end of the data.

        A close (FIN) cannot tell the end of the server's data from a restart, so the client
        reconnects once, asking for the records after the last ones it got: a server that then
        closes again without sending any record has no more data for these streams, the normal
        end of the stream (INFO). A reset or read error is a drop (WARNING) and is resumed.
        """
        resume = ", ".join(f"{s.net}.{s.station} after #{s.seqnum}" for s in conn.streams)
        if exc.clean and self.closed_cleanly and self.records_this_connection == 0:
            logger.info("SeedLink %s: the server has no records after the last ones received (%s) "
                        "and closed the connection: end of the stream", self.address, resume)
            self.ended_normally = True
            return True
        if exc.clean:
            logger.info("SeedLink %s: the server closed the connection after %d record(s) (the end of "
                        "its data, or a restart); reconnecting to resume %s", self.address,
                        self.records_this_connection, resume)
        else:
            logger.warning("SeedLink %s: %s after %d record(s); reconnecting to resume %s", self.address,
                           exc, self.records_this_connection, resume)
        self.closed_cleanly = exc.clean
        conn.disconnect()
        self._stop.wait(self.backoff_initial)
        return False

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        from obspy.clients.seedlink.easyseedlink import EasySeedLinkClient
        from obspy.clients.seedlink.seedlinkexception import SeedLinkException
        from obspy.clients.seedlink.slpacket import SLPacket

        client = EasySeedLinkClient(self.address, autoconnect=False)
        conn = _seedlink_connection_class()(self)
        conn.set_sl_address(self.address)
        conn.netto, conn.netdly, conn.keepalive = self.netto, self.backoff_initial, self.keepalive
        client.conn = conn
        self._client = client
        selected = False
        failures = 0
        while not self._stop.is_set():
            try:
                if not selected:
                    client.connect()  # HELLO; then INFO CAPABILITIES via select_stream
                    for net, sta, loc, cha in self.streams:
                        client.select_stream(net, sta, f"{loc}{cha}" if loc not in ("", "*", "??") else cha)
                    if self.statefile:
                        conn.set_state_file(self.statefile)
                    selected = True
                packet = conn.collect()
            except ConnectionEnded as exc:
                if self._stop.is_set():
                    break
                if self._connection_ended(conn, exc):
                    break
                continue
            except (SeedLinkException, OSError) as exc:
                if self._stop.is_set():
                    break
                self._retry(conn, failures, str(exc))
                failures += 1
                continue
            if self._stop.is_set():
                break
            if packet == SLPacket.SLTERMINATE:
                # the server ended the stream (a dial-up/FETCH session, or a server shutting
                # down cleanly): the normal end of the data, not an error
                logger.info("SeedLink %s: the server ended the stream", self.address)
                self.ended_normally = True
                break
            if packet == SLPacket.SLERROR:
                self._retry(conn, failures, "the server answered ERROR")
                failures += 1
                continue
            if packet is None or packet.get_type() in (SLPacket.TYPE_SLINF, SLPacket.TYPE_SLINFT):
                continue
            try:
                trace = packet.get_trace()
            except Exception as exc:  # noqa: BLE001
                self.bad_records += 1
                logger.warning("SeedLink %s: undecodable record skipped (%s)", self.address, exc)
                continue
            failures = 0
            self.records_this_connection += 1
            self.closed_cleanly = False
            deliver(trace)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass

    def stop(self) -> None:
        super().stop()
        client = self._client
        if client is not None:
            client.conn.terminate()
            sock = client.conn.socket
            if sock is not None:  # wake the blocking recv()
                try:
                    import socket as _socket

                    sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        return UTCDateTime(t).timestamp  # live data: data time is UTC
