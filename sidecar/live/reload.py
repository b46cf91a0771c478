"""Reloading ``sidecar run``'s configuration while it runs (SIGHUP, ``systemctl reload``).

The file is read again (off the event loop, with the environment's overrides) and
checked whole: a file with an error is refused, nothing changes and the sidecar runs on.
Of the keys that changed, those the schema marks as appliable in place
(``restart=False`` in ``sidecar/config.py``: the alert and recharge webhooks, the
recharge command, ``kamailio.shed_after_ms`` and ``rpc_timeout``, the chunking keys,
the media thresholds) take effect at once; the others (where the store is, who this node
is, where Kamailio and the metrics are, the capture's set-up) need a restart: the
sidecar logs them and keeps running with the values it started with. Keys only other
commands read (``[api]``, ``[invoice]``) are reported as such.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, changed_keys, load_config, restart_needed, schema

#: Tables ``sidecar run`` does not read.
OTHER_COMMANDS = ("api.", "invoice.")


@dataclass(frozen=True)
class Reload:
    """What a reload found: the configuration to run with (the running one with the
    new values of the keys applied in place) and the changed key paths by kind."""

    config: Config
    applied: list[str]
    need_restart: list[str]
    not_used: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.need_restart or self.not_used)


def plan_reload(running: Config, new: Config) -> Reload:
    """Compare the running configuration with the one read again; keep the running
    values of the keys that need a restart."""
    changed = changed_keys(running, new)
    restart = set(restart_needed(changed))
    not_used = [p for p in changed if p.startswith(OTHER_COMMANDS)]
    applied = [p for p in changed if p not in restart and p not in not_used]
    fields = {k.path: f.name for f, k in schema()}
    return Reload(
        config=dataclasses.replace(running, **{fields[p]: getattr(new, fields[p])
                                               for p in applied}),
        applied=applied,
        need_restart=[p for p in changed if p in restart and p not in not_used],
        not_used=not_used)


def read_again(path: str | Path, node: str | None) -> Config:
    """The configuration file read again (blocking: run it in a thread); ``node`` is
    the ``--node`` option, which wins over the file as at start. ConfigError when the
    file cannot be used."""
    new = load_config(path)
    return dataclasses.replace(new, node=node) if node is not None else new
