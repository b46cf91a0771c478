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
* :mod:`sidecar.media.frames` - the sans-IO ``FrameDecoder``: link-layer frames (VLAN,
  QinQ, PPPoE, MPLS, GRE/ERSPAN, VXLAN, ... ; dpkt for the rest) to UDP/TCP payloads,
  shared by both capture edges.
* :mod:`sidecar.media.pcap` - the capture edge: pcap/pcapng files to UDP/TCP payloads
  (``read_capture``); re-exports the decoder's names.
* :mod:`sidecar.media.capture` - the live edge: an AF_PACKET socket (TPACKET_V3 ring) with
  a libpcap-compiled kernel filter, loopback de-duplication and kernel drop counters
  (``LiveCapture``, ``interface_towards``, ``port_filter``).

Everything except ``pcap.CaptureReader`` and ``capture`` is pure: no sockets, no clocks, no asyncio.
Times are sample counts or capture timestamps passed in by the caller.
"""
