#!/usr/bin/env python3
"""Rewrite README.md's environment tables from the sidecars' settings modules (their `ENVIRONMENT`).

tests/unit/test_help_tables.py fails when the README and `--help` disagree; run this to make them agree.
"""

from __future__ import annotations

from pathlib import Path

from nsc_sidecar.settings import ENVIRONMENT as NSC_ENVIRONMENT
from nse_sidecar.settings import ENVIRONMENT as NSE_ENVIRONMENT
from nsm_sdk.protocol.envdoc import with_readme_block

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    for program, rows in (("nsc-sidecar", NSC_ENVIRONMENT), ("nse-sidecar", NSE_ENVIRONMENT)):
        text = with_readme_block(text, program, rows)
    README.write_text(text)
    print(f"{README}: environment tables rewritten")


if __name__ == "__main__":
    main()
