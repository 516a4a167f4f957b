"""Stream framing for SIP over TCP and TLS (RFC 3261 §18.3), sans-I/O.

Theory of operation
-------------------
A stream transport delivers bytes with no message boundaries. RFC 3261 §18.3
makes ``Content-Length`` mandatory on streams: the end of the header block is
the first empty line (CRLF CRLF), and the body is exactly Content-Length bytes
after it. :class:`StreamFramer` buffers what the socket delivered, cuts whole
messages out of it and hands them over untouched (parsing is the SIP core's
job)::

    framer = StreamFramer()
    framer.receive_data(chunk)                 # whatever the socket delivered
    for message in framer.messages_received():  # zero or more whole messages
        stack.receive_message(message, remote, now)
    if framer.pings_to_answer():                # RFC 5626 §4.4.1 CRLF keepalive
        sock.write(PONG)
    if framer.error is not None:                # framing is lost: close the connection
        sock.close()

Between messages the framer skips CRLFs (RFC 3261 §7.5: CRLFs before a
start-line MUST be ignored). A double CRLF there is an RFC 5626 keepalive
"ping" and a lone CRLF a "pong"; both are counted, neither is a message.

Once framing is lost there is no way to find the next message boundary in a
byte stream, so the framer enters a terminal error state and the connection
must be closed. It gets there when:

* the start-line is not a SIP request or status line (garbage),
* a header block has no ``Content-Length`` (RFC 3261 §18.3: MUST on streams),
  or it is not a decimal number, or two of them disagree,
* a header block or a whole message would exceed :data:`MAX_MESSAGE_SIZE`.

Nothing here raises on network input: :meth:`StreamFramer.receive_data`
records the problem in :attr:`StreamFramer.error` and counts the dropped bytes.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PING",
    "PONG",
    "StreamFramer",
]

# Largest message (headers + body) accepted on a stream. SIP over UDP cannot
# exceed 65535 bytes either; a load generator never needs more, and a bound is
# what keeps a misbehaving peer from growing our buffer without limit.
MAX_MESSAGE_SIZE = 65_535

# RFC 5626 §4.4.1: a client sends CRLF CRLF ("ping"), the server answers CRLF ("pong").
PING = b"\r\n\r\n"
PONG = b"\r\n"

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
# Content-Length or its compact form "l" (RFC 3261 §7.3.3, §20.14), at the start of
# a header line, any case, optional whitespace before the colon (RFC 3261 §7.3.1).
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
# Request-Line: Method SP Request-URI SP SIP-Version; Status-Line: SIP-Version SP code SP reason.
_REQUEST_LINE = re.compile(rb"^[A-Za-z0-9.!%*_+`'~-]+ \S+ SIP/2\.0$")
_STATUS_LINE = re.compile(rb"^SIP/2\.0 [1-6][0-9][0-9](?: .*)?$")


class StreamFramer:
    """Cuts whole SIP messages out of one TCP/TLS byte stream.

    Feed every chunk read from the connection to :meth:`receive_data`, then
    drain :meth:`messages_received` and :meth:`pings_to_answer`, then check
    :attr:`error`: when it is set the connection must be closed (framing is
    lost for good, and further data is dropped and counted).
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._messages: list[bytes] = []
        self._pings = 0
        self.error: str | None = None
        self.messages_framed = 0
        self.pings_received = 0
        self.pongs_received = 0
        self.bytes_dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream and frame every complete message in them."""
        if self.error is not None:
            self.bytes_dropped += len(data)
            return
        self._buffer += data
        while self.error is None and self._frame_one():
            pass

    def messages_received(self) -> list[bytes]:
        """Return (and forget) the whole messages framed since the last call, in order."""
        messages, self._messages = self._messages, []
        return messages

    def pings_to_answer(self) -> int:
        """Return (and reset) how many RFC 5626 pings arrived; answer each with :data:`PONG`."""
        pings, self._pings = self._pings, 0
        return pings

    def _frame_one(self) -> bool:
        """Frame one message off the buffer; False when more bytes are needed."""
        self._skip_keepalives()
        buffer = self._buffer
        if not buffer:
            return False
        head_end = buffer.find(_HEADER_END)
        if head_end < 0:
            return self._check_partial_head()
        first_line_end = buffer.find(_CRLF)
        if not self._is_start_line(bytes(buffer[:first_line_end])):
            return False
        content_length = self._content_length(bytes(buffer[: head_end + 2]))
        if content_length is None:
            return False
        total = head_end + len(_HEADER_END) + content_length
        if total > self.max_message_size:
            return self._fail(
                f"message of {total} bytes exceeds MAX_MESSAGE_SIZE={self.max_message_size}"
            )
        if len(buffer) < total:
            return False
        self._messages.append(bytes(buffer[:total]))
        del buffer[:total]
        self.messages_framed += 1
        return True

    def _skip_keepalives(self) -> None:
        """RFC 3261 §7.5 / RFC 5626 §4.4.1: drop CRLFs before a start-line, count pings/pongs."""
        buffer = self._buffer
        skipped = 0
        while buffer.startswith(_CRLF, skipped):
            skipped += 2
        if not skipped:
            return
        # Only whole CRLFs are skipped: a trailing lone CR stays until its LF arrives.
        # A ping split across two reads counts as two pongs; harmless, both are dropped.
        pairs = skipped // 2
        self._pings += pairs // 2
        self.pings_received += pairs // 2
        self.pongs_received += pairs % 2
        del buffer[:skipped]

    def _check_partial_head(self) -> bool:
        """No blank line yet: fail on garbage or oversize, otherwise wait for more."""
        buffer = self._buffer
        if len(buffer) > self.max_message_size:
            return self._fail(
                f"header block longer than MAX_MESSAGE_SIZE={self.max_message_size} bytes"
            )
        first_line_end = buffer.find(_CRLF)
        if first_line_end >= 0:
            self._is_start_line(bytes(buffer[:first_line_end]))
        return False

    def _is_start_line(self, line: bytes) -> bool:
        if _REQUEST_LINE.match(line) or _STATUS_LINE.match(line):
            return True
        self._fail(f"not a SIP start-line: {line[:60]!r}")
        return False

    def _content_length(self, head: bytes) -> int | None:
        """Return the one Content-Length of a header block (folded lines unfolded)."""
        # RFC 3261 §7.3.1: a line starting with whitespace continues the previous one.
        unfolded = re.sub(rb"\r\n[ \t]+", b" ", head)
        values = {v.strip() for v in _CONTENT_LENGTH.findall(unfolded)}
        if not values:
            self._fail("no Content-Length header (RFC 3261 §18.3 requires it on TCP/TLS)")
            return None
        if len(values) > 1:
            self._fail(f"conflicting Content-Length values {sorted(values)!r}")
            return None
        (value,) = values
        if not value.isdigit() or len(value) > 9:
            self._fail(f"Content-Length is not a decimal length: {value[:20]!r}")
            return None
        return int(value)

    def _fail(self, reason: str) -> bool:
        self.error = reason
        self.bytes_dropped += len(self._buffer)
        self._buffer.clear()
        return False
