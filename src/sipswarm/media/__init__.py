"""Media core: SDP offer/answer, RTP/RTCP packets, codecs, sources, receive statistics, E-model.

Sans-I/O: no sockets, no timers; the engine owns the clock and passes ``now``.
"""
