"""The configuration schema is declared once: the README, the example, the invoice
settings and the loader all follow from it."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

from sidecar.config import (
    Config,
    default_of,
    example_toml,
    key_of,
    load_config,
    reference_markdown,
    schema,
)
from sidecar.invoices import InvoiceSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_field_is_one_documented_key() -> None:
    keys = [k for _, k in schema()]
    assert len({k.path for k in keys}) == len(keys)
    assert {f.name for f in dataclasses.fields(Config)} - {f.name for f, _ in schema()} \
        == {"source"}
    for key in keys:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", key.path), key.path
        assert len(key.doc) > 10, key.path
    assert key_of("media_grace_ms") == "media.grace_ms"
    assert key_of("db_url") == "database.url"


def test_the_readme_table_is_the_schema() -> None:
    text = README.read_text()
    m = re.search(r"<!-- config-reference:[^\n]*-->\n(.*?)<!-- /config-reference -->", text,
                  re.S)
    assert m, "README has no generated configuration reference"
    assert m.group(1) == reference_markdown(), (
        "README's configuration table differs from sidecar/config.py: paste "
        "sidecar.config.reference_markdown() between the markers")


def test_the_readme_examples_are_valid_configurations(tmp_path: Path) -> None:
    """Every indented TOML example in the README (a block starting with a [table] of the
    schema) loads: no key there that the schema does not know, no wrong type."""
    tables = {k.table for _, k in schema()}
    blocks = re.findall(r"\n\n((?:    [^\n]*\n)+)", README.read_text())
    checked = 0
    for block in blocks:
        body = "\n".join(line[4:] for line in block.splitlines())
        first = body.lstrip().split("\n", 1)[0]
        if not (first.startswith("[") and first.strip("[]") in tables):
            continue
        p = tmp_path / "example.toml"
        p.write_text(body.split("\n\n    sidecar ")[0].split("\nsidecar ")[0])
        load_config(p)  # raises ConfigError naming the key
        checked += 1
    assert checked >= 3


def test_the_example_is_the_defaults(tmp_path: Path) -> None:
    p = tmp_path / "example.toml"
    p.write_text(example_toml())
    doc = tomllib.loads(p.read_text())
    assert set(doc) == {k.table for _, k in schema()}
    cfg = load_config(p)
    defaults = Config()
    for f, key in schema():
        assert getattr(cfg, f.name) == getattr(defaults, f.name), key.path
        if key.path not in ("node.name", "database.url"):
            assert key.name in doc[key.table], key.path


def test_invoice_settings_take_their_names_types_and_defaults_from_the_schema() -> None:
    invoice = {k.name: f for f, k in schema() if k.table == "invoice"}
    mine = {f.name: f for f in dataclasses.fields(InvoiceSettings)}
    assert set(mine) == set(invoice)
    hints = typing.get_type_hints(InvoiceSettings)
    config_hints = typing.get_type_hints(Config)
    for name, f in invoice.items():
        assert hints[name] == config_hints[f.name], name
        assert mine[name].default == default_of(f), name
    cfg = Config(invoice_due_days=30, invoice_tax_label="VAT")
    s = InvoiceSettings.from_config(cfg)
    assert (s.due_days, s.tax_label, s.detail_csv_over) == (30, "VAT", 500)
