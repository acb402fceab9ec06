"""A small SeedLink 3 server for tests and demos: real TCP on 127.0.0.1, ObsPy-made records.

It speaks what ObsPy's client (``obspy.clients.seedlink``) sends:

- ``HELLO`` -> two lines (server id with ``v3.1``, organisation) in one segment;
- ``INFO CAPABILITIES|ID|STATIONS|STREAMS`` -> XML in ``SLINFO`` packets (``SLINFO *`` while more
  follow), the payload an ASCII MiniSEED record, as ObsPy's ``get_info``/keep-alive expect;
- ``STATION sta net``, ``SELECT pattern``, ``DATA [seq]`` / ``FETCH [seq]`` -> ``OK``/``ERROR``;
  ``DATA 0x1a`` (ObsPy's resume format) and ``DATA 00001A`` (libslink's) both resume at that
  sequence number;
- ``END`` -> streaming: ``SL`` + 6 hex digits + one 512-byte Steim2 MiniSEED record, per station
  in sequence order; ``BYE`` closes.

Records are released on a simulated clock: a record becomes available once the data time of its
end has been reached, the data clock starting at the first sample and running ``speed`` x the wall
clock from the first ``END`` (``speed=0``: everything at once).
``shift_to_now`` re-stamps the data so that it looks live (the first sample at the start time).

Fault injection for resilience tests: ``drop_after`` data packets the first connection is cut
(``drop_mode`` ``"reset"``: TCP RST, ``"close"``: FIN); ``refuse_after_drop`` connections after
the drop are accepted and closed at once (so the client has to back off); ``corrupt`` sequence
numbers are sent with a garbage record. ``close_at_end``: once every selected station's last
record is sent, the server closes the connection (TCP FIN), as a server whose data has ended does.
Every thread stops by itself after ``max_duration`` s.

Run standalone for a live demo::

    python tests/seedlink_server.py --sds ../shared/data/cx_continuous/sds --streams "CX.PB0?..HH?" \
        --start 2014-05-01T00:00:00 --end 2014-05-01T00:20:00 --port 18000 --speed 1 --shift-to-now
"""

from __future__ import annotations

import argparse
import io
import logging
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import obspy
from obspy.io.mseed.util import get_record_information

logger = logging.getLogger("seedlink_test_server")

RECORD_LENGTH = 512
HELLO_LINES = b"SeedLink v3.1 (seisbench_feq test server) :: SLPROTO:3.1 CAP EXTREPLY NSWILDCARD\r\nseisbench_feq tests\r\n"
CAPABILITIES = ("dialup", "multistation", "window-extraction", "info:id", "info:capabilities",
                "info:stations", "info:streams")


@dataclass
class Record:
    seq: int
    station: str  # "NET_STA"
    end_time: float  # timestamp just after the last sample: when the record can exist
    payload: bytes  # 512 bytes of MiniSEED


@dataclass
class ServerLog:
    """What the server saw, for assertions."""

    connections: int = 0
    refused: int = 0
    commands: list = field(default_factory=list)  # (connection number, command line)
    sent: list = field(default_factory=list)  # (connection number, station, seq)
    drops: int = 0
    closed_at_end: int = 0  # connections closed because every selected station was sent to its end


def records_from_stream(stream: obspy.Stream, shift: float = 0.0) -> dict[str, list[Record]]:
    """Cut each trace into 512-byte Steim2 records (ObsPy's writer); number them per station."""
    per_station: dict[str, list[tuple[float, str, bytes]]] = {}
    for trace in stream:
        trace = trace.copy()
        trace.stats.starttime += shift
        trace.data = np.require(trace.data, dtype=np.int32)
        buf = io.BytesIO()
        trace.write(buf, format="MSEED", reclen=RECORD_LENGTH, encoding="STEIM2")
        raw = buf.getvalue()
        for offset in range(0, len(raw), RECORD_LENGTH):
            info = get_record_information(io.BytesIO(raw[offset:offset + RECORD_LENGTH]))
            end = info["endtime"].timestamp + 1.0 / info["samp_rate"]
            key = f"{trace.stats.network}_{trace.stats.station}"
            per_station.setdefault(key, []).append((end, trace.id, raw[offset:offset + RECORD_LENGTH]))
    out = {}
    for key, recs in per_station.items():
        recs.sort(key=lambda r: (r[0], r[1]))
        out[key] = [Record(seq + 1, key, end, payload) for seq, (end, _, payload) in enumerate(recs)]
    return out


def info_packets(xml: str) -> list[bytes]:
    """XML split into SLINFO packets with ASCII MiniSEED payloads (``*`` = more follow)."""
    body = xml.encode()
    chunks = [body[i:i + 400] for i in range(0, len(body), 400)] or [b""]
    packets = []
    for i, chunk in enumerate(chunks):
        trace = obspy.Trace(np.frombuffer(chunk, dtype="|S1"),
                            header=dict(network="XX", station="INFO", channel="LOG"))
        buf = io.BytesIO()
        trace.write(buf, format="MSEED", reclen=RECORD_LENGTH, encoding="ASCII")
        head = b"SLINFO *" if i < len(chunks) - 1 else b"SLINFO  "
        packets.append(head + buf.getvalue()[:RECORD_LENGTH])
    return packets


class SeedLinkTestServer:
    """Threaded SeedLink server on 127.0.0.1 (port 0 = any free port). Use as a context manager."""

    def __init__(self, stream: obspy.Stream, speed: float = 0.0, port: int = 0,
                 drop_after: int | None = None, drop_mode: str = "reset", refuse_after_drop: int = 0,
                 corrupt: set[tuple[str, int]] | None = None, shift_to_now: bool = False,
                 close_at_end: bool = False, max_duration: float = 120.0):
        if len(stream) == 0:
            raise ValueError("SeedLinkTestServer: the stream to serve is empty")
        shift = 0.0
        if shift_to_now:
            shift = time.time() - min(tr.stats.starttime for tr in stream).timestamp
        self.records = records_from_stream(stream, shift)
        self.data_start = min(tr.stats.starttime for tr in stream).timestamp + shift
        self.speed = speed
        self.drop_after = drop_after
        self.drop_mode = drop_mode
        self.refuse_after_drop = refuse_after_drop
        self.corrupt = set(corrupt or ())
        self.close_at_end = close_at_end
        self.max_duration = max_duration
        self.log = ServerLog()
        self._stop = threading.Event()
        # live data runs on the wall clock from now; otherwise the clock starts at the first END
        self._clock_start: float | None = time.time() if shift_to_now else None
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))  # loopback only
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> None:
        thread = threading.Thread(target=self._accept_loop, name="seedlink-server", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()

    def _expired(self) -> bool:
        return self._stop.is_set() or time.monotonic() - self._started > self.max_duration

    def _available_until(self) -> float:
        """Data time up to which records exist now (the simulated digitiser clock)."""
        if self.speed <= 0:
            return float("inf")
        with self._lock:
            if self._clock_start is None:
                self._clock_start = time.time()
            elapsed = time.time() - self._clock_start
        return self.data_start + elapsed * self.speed

    def _accept_loop(self) -> None:
        while not self._expired():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self.log.connections += 1
                number = self.log.connections
                refuse = self.log.drops > 0 and self.log.refused < self.refuse_after_drop
                if refuse:
                    self.log.refused += 1
            if refuse:
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(0.2)
        selected: dict[str, int] = {}  # station -> next sequence number (0 = from the start)
        current: str | None = None
        streaming = False
        buffer = b""
        sent_here = 0
        try:
            while not self._expired():
                readable, _, _ = select.select([conn], [], [], 0 if streaming else 0.05)
                if readable:
                    chunk = conn.recv(1024)
                    if not chunk:
                        return
                    buffer += chunk
                while b"\r" in buffer or b"\n" in buffer:
                    cut = min(i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0)
                    line, buffer = buffer[:cut].decode(errors="replace").strip(), buffer[cut + 1:]
                    if not line:
                        continue
                    with self._lock:
                        self.log.commands.append((number, line))
                    reply, current, start = self._command(line, selected, current)
                    if reply is not None:
                        conn.sendall(reply)
                    if line.upper() == "BYE":
                        return
                    streaming = streaming or start
                if not streaming:
                    continue
                until = self._available_until()
                pending = []
                for station, next_seq in selected.items():
                    # sequence numbers are list index + 1; one record per station per pass keeps
                    # stations interleaved in time order
                    records = self.records.get(station, [])
                    index = max(next_seq - 1, 0)
                    if index < len(records) and records[index].end_time <= until:
                        pending.append(records[index])
                if not pending:
                    if self.close_at_end and all(max(seq - 1, 0) >= len(self.records.get(sta, []))
                                                 for sta, seq in selected.items()):
                        with self._lock:
                            self.log.closed_at_end += 1
                        return  # the finally clause closes the socket: a FIN after the last record
                    time.sleep(0.01)
                    continue
                for record in sorted(pending, key=lambda r: r.end_time):
                    payload = record.payload
                    if (record.station, record.seq) in self.corrupt:
                        payload = b"\x5a" * RECORD_LENGTH  # not MiniSEED at all
                    conn.sendall(b"SL%06X" % record.seq + payload)
                    selected[record.station] = record.seq + 1
                    sent_here += 1
                    with self._lock:
                        self.log.sent.append((number, record.station, record.seq))
                    if self.drop_after is not None and self.log.drops == 0 and sent_here >= self.drop_after:
                        with self._lock:
                            self.log.drops += 1
                        if self.drop_mode == "reset":  # abortive close: the client sees ECONNRESET
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
        except OSError as exc:
            logger.info("connection %d ended: %s", number, exc)
        finally:
            conn.close()

    def _command(self, line: str, selected: dict[str, int], current: str | None):
        """One command -> (reply bytes or None, current station, whether streaming starts)."""
        words = line.split()
        verb = words[0].upper()
        if verb == "HELLO":
            return HELLO_LINES, current, False
        if verb == "INFO":
            level = words[1].upper() if len(words) > 1 else "ID"
            return b"".join(info_packets(self._info_xml(level))), current, False
        if verb == "STATION" and len(words) >= 3:
            station = f"{words[2]}_{words[1]}"
            if station not in self.records:
                return b"ERROR\r\n", None, False
            selected.setdefault(station, 0)
            return b"OK\r\n", station, False
        if verb == "SELECT":
            ok = len(words) == 2 and len(words[1]) <= 8
            return (b"OK\r\n" if ok else b"ERROR\r\n"), current, False
        if verb in ("DATA", "FETCH"):
            if current is None:
                return b"ERROR\r\n", current, False
            if len(words) >= 2:
                try:
                    selected[current] = int(words[1], 16)  # accepts "0x1a" and "00001A"
                except ValueError:
                    return b"ERROR\r\n", current, False
            return b"OK\r\n", current, False
        if verb == "END":
            return None, current, True
        if verb == "BYE":
            return None, current, False
        return b"ERROR\r\n", current, False

    def _info_xml(self, level: str) -> str:
        head = '<?xml version="1.0"?><seedlink software="seisbench_feq test server" organization="tests">'
        if level == "CAPABILITIES":
            body = "".join(f'<capability name="{c}"/>' for c in CAPABILITIES)
        elif level in ("STATIONS", "STREAMS"):
            body = ""
            for key, recs in self.records.items():
                net, sta = key.split("_", 1)
                body += (f'<station name="{sta}" network="{net}" begin_seq="{recs[0].seq:06X}" '
                         f'end_seq="{recs[-1].seq:06X}"/>')
        else:
            body = ""
        return head + body + "</seedlink>"


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sds", required=True, help="SDS archive root")
    parser.add_argument("--streams", default="*.*.*.*", help="comma-separated NET.STA.LOC.CHA patterns")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--shift-to-now", action="store_true", help="re-stamp the data as live")
    parser.add_argument("--max-duration", type=float, default=3600.0)
    args = parser.parse_args()
    from obspy.clients.filesystem.sds import Client

    client = Client(args.sds)
    stream = obspy.Stream()
    for pattern in args.streams.split(","):
        net, sta, loc, cha = pattern.strip().split(".")
        stream += client.get_waveforms(net, sta, loc, cha, obspy.UTCDateTime(args.start),
                                       obspy.UTCDateTime(args.end))
    server = SeedLinkTestServer(stream, speed=args.speed, port=args.port, shift_to_now=args.shift_to_now,
                                max_duration=args.max_duration)
    print(f"serving {len(stream)} traces on {server.address} at speed {args.speed}", flush=True)
    server.start()
    try:
        while not server._expired():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _main()
