"""Media: seeing a call's RTP, so answer is confirmed by media and FAS is detected.

Modules, each importable on its own (nothing is re-exported here, so importing one does
not pull in the others or dpkt):

* :mod:`sidecar.media.sdp` - offer/answer SDP to addresses, ports, payload types, codecs,
  direction (``parse_sdp``, ``SdpError``).
* :mod:`sidecar.media.rtp` - RTP header from a UDP payload, ``None`` for non-RTP/RTCP
  (``parse_rtp``).
* :mod:`sidecar.media.g711` - PCMU/PCMA to 16-bit linear by 256-entry tables (``Codec``).
* :mod:`sidecar.media.tones` - streaming ringback (Goertzel-style projection, the published
  10x / 8-block rule) and silence (mean |sample| < 512) detectors.
* :mod:`sidecar.media.pcap` - the capture edge: pcap/pcapng files to UDP/TCP payloads
  (``read_capture``), with the sans-IO ``FrameDecoder`` a live capture can reuse.

Everything except ``pcap.CaptureReader`` is pure: no sockets, no clocks, no asyncio.
Times are sample counts or capture timestamps passed in by the caller.
"""
