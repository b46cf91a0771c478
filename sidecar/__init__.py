"""Real-time billing sidecar for the Kamailio SIP proxy.

The flow of one call, and where each step lives:

    INVITE  -> kamailio/ (evapi `offer`)  -> sidecar.kamailio   (edge: evapi client)
            -> sidecar.charging.authorize -> sidecar.rating     (core: deck, prefix, price)
    200 OK  -> `answer` + RTP seen        -> sidecar.media      (core: answer confirmed, FAS)
            -> sidecar.charging           reserves credit in chunks (ledger in sidecar.store)
    credit gone                           -> sidecar.kamailio   (edge: JSON-RPC dlg.end_dlg)
    BYE     -> `end`                      -> sidecar.charging   settles once, writes the CDR
    month end                             -> sidecar.invoices   (HTML/PDF from SQLite)

The core (money, numbers, rating, charging, media) does no I/O and reads no clock:
time is always an argument. Edges (store, kamailio, capture, api, cli) do the I/O.
"""

__version__ = "0.1.0"
