"""The [invoice] and [api] sections of the TOML configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.invoices import InvoiceSettings


def test_invoice_settings_come_from_the_config(tmp_path: Path) -> None:
    p = tmp_path / "sidecar.toml"
    p.write_text('[invoice]\nprovider_name = "Carrier Ltd"\nprovider_address = "1 Way\\nTown"\n'
                 'provider_tax_number = "GB1"\ntemplate_dir = "/etc/sidecar/templates"\n'
                 'due_days = 30\ndetail_csv_over = 1000\ntax_label = "VAT"\n'
                 '[api]\nlisten = "127.0.0.1:9000"\ntoken_file = "/etc/sidecar/token"\n')
    cfg = load_config(p)
    s = InvoiceSettings.from_config(cfg)
    assert (s.provider_name, s.provider_address, s.provider_tax_number) == \
        ("Carrier Ltd", "1 Way\nTown", "GB1")
    assert (s.template_dir, s.due_days, s.detail_csv_over, s.tax_label) == \
        ("/etc/sidecar/templates", 30, 1000, "VAT")
    assert (cfg.api_listen, cfg.api_token_file) == ("127.0.0.1:9000", "/etc/sidecar/token")
    defaults = InvoiceSettings()
    assert (defaults.due_days, defaults.detail_csv_over) == (14, 500)


@pytest.mark.parametrize(("body", "message"), [
    ("[invoice]\nprovider = \"x\"\n", "invoice.provider: unknown key"),
    ("[invoice]\ndue_days = \"14\"\n", "invoice.due_days: must be int, not str"),
    ("[invoice]\ndue_days = -1\n", "invoice.due_days: must be at least 0, not -1"),
    ("[invoice]\ndetail_csv_over = -5\n", "invoice.detail_csv_over: must be at least 0"),
])
def test_bad_invoice_settings_are_refused(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(p)
