"""Dialog supervision: was the call really answered, and was the answer true?

The flow of one call through this package (all pure: time is an argument)::

    offer SDP  ──► FlowTable: the caller's media address is registered at the INVITE
    18x / 183  ──► ringing time; early-media SDP registers the callee's address
    200 OK     ──► answer time; grace window for the callee's first media opens
    RTP        ──► Stream counters per direction; callee audio to the ringback and
                   silence detectors (sidecar.media.tones)
    BYE / end  ──► MediaVerdict: billable start (or not billed), FAS verdict, reasons

* :mod:`.flows` - which dialog and which party an RTP packet belongs to.
* :mod:`.media` - :class:`~.media.MediaSupervisor`: per-dialog media facts and verdicts.
* :mod:`.calls` - :class:`~.calls.CallControl`: charging and media supervision driven by
  one stream of events, shared by the live sidecar and pcap replay.
* :mod:`.routes` - FAS patterns over many calls of one route (instant answers, uniform
  durations, short calls, answer delays).
"""
