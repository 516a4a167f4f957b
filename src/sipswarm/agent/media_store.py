"""Media files sent by the controller (``media`` text frame + one binary frame).

PROTOCOL.md: the text frame ``{"type": "media", "sha256", "name", "size"}`` is
followed by exactly one binary frame with the file (WAV, PCM 16-bit mono,
any rate). The store checks size, hash and format, writes the file
atomically to ``STATE_DIR/media/<sha256>.wav`` and lists held hashes for
``hello.media``. A text frame arriving where the binary was expected, or a
binary frame nobody announced, is answered with an ``error`` frame.

Usage per connection: :meth:`MediaStore.reset` on (re)connect, then
:meth:`receive_announce`, :meth:`receive_binary`, :meth:`receive_text`;
each returns the error detail to send back, or None.
"""

from __future__ import annotations

import hashlib
import io
import os
import wave
from pathlib import Path

from sipswarm.protocol import MediaAnnounce

SUFFIX = ".wav"


class MediaStore:
    """The worker's held media files, keyed by sha256."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._held: set[str] = set()
        self._expected: MediaAnnounce | None = None
        self.rejected = 0
        self._scan()

    def held(self) -> list[str]:
        """Sorted sha256 of every file held: ``hello.media``."""
        return sorted(self._held)

    def path_for(self, sha256: str) -> Path:
        """Where the file with this hash lives (the engine reads it from there)."""
        return self.directory / f"{sha256}{SUFFIX}"

    def reset(self) -> None:
        """A new connection: any half-received media is forgotten."""
        self._expected = None

    def receive_announce(self, announce: MediaAnnounce) -> str | None:
        """The text half arrived; the next frame must be the binary file."""
        previous, self._expected = self._expected, announce
        if previous is not None:
            self.rejected += 1
            return f"media {previous.sha256} ({previous.name}) was announced but no file followed"
        return None

    def receive_text(self) -> str | None:
        """A text frame arrived; an error if a binary frame was expected instead."""
        expected, self._expected = self._expected, None
        if expected is None:
            return None
        self.rejected += 1
        return (
            f"media {expected.sha256} ({expected.name}) must be followed by one binary frame"
            " with the file; a text frame came first"
        )

    def receive_binary(self, data: bytes) -> tuple[str | None, str | None]:
        """The file arrived: ``(sha256, None)`` when stored, ``(None, detail)`` when refused."""
        expected, self._expected = self._expected, None
        if expected is None:
            self.rejected += 1
            return None, "binary frame without a preceding media frame; send media first"
        problem = _check(expected, data)
        if problem is not None:
            self.rejected += 1
            return None, problem
        if expected.sha256 not in self._held:
            self._write(expected.sha256, data)
            self._held.add(expected.sha256)
        return expected.sha256, None

    def _write(self, sha256: str, data: bytes) -> None:
        final = self.path_for(sha256)
        tmp = final.with_suffix(".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(final)

    def _scan(self) -> None:
        for path in self.directory.glob(f"*{SUFFIX}"):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if path.stem == digest:
                self._held.add(digest)
            else:
                path.unlink(missing_ok=True)  # corrupt or foreign: the controller resends


def _check(expected: MediaAnnounce, data: bytes) -> str | None:
    where = f"media {expected.sha256} ({expected.name})"
    if len(data) != expected.size:
        return f"{where}: size is {len(data)} bytes, the media frame said {expected.size}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        return f"{where}: sha256 of the received file is {digest}; resend the file"
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width = wav.getnchannels(), wav.getsampwidth()
    except (wave.Error, EOFError) as exc:
        return f"{where}: not a WAV file ({exc}); send PCM 16-bit mono WAV"
    if channels != 1 or width != 2:
        return (
            f"{where}: WAV has {channels} channel(s) of {8 * width} bits; send PCM 16-bit mono WAV"
        )
    return None
