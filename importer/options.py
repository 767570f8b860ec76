"""The options and argument every bundle-reading command of ``overleaf-import`` shares (one text each).

``verify``, ``load``, ``push`` (importer/cli.py) and ``upgrade``, ``rehearse``, ``estimate``, ``report``
(importer/cli_upgrade.py) name the bundle and how to trust it the same way:

    def verify(bundle_dir: Path = BundleArg, trust: Optional[List[Path]] = TrustOpt, ...): ...
"""
from __future__ import annotations

import typer

TrustOpt = typer.Option(None, "--trust", metavar="PUBKEY",
                        help="Trust this Ed25519 public key (.pub, PEM); repeatable. Without it, the *.pub files of "
                             "the trust folder (/etc/overleaf-airgap/trusted.d, env OVERLEAF_AIRGAP_TRUST_DIR).")
PartsOpt = typer.Option(None, "--parts-from", metavar="DIR",
                        help="Another folder holding parts (one per disc); repeatable. In a terminal you are asked "
                             "for the next disc's folder when a part is missing.")
ExpiredOpt = typer.Option(False, "--allow-expired", help="Accept a bundle past its expiry date (with a warning).")
DowngradeOpt = typer.Option(False, "--allow-downgrade",
                            help="Accept a bundle older than the last one this host accepted (with a warning).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
BundleArg = typer.Argument(..., metavar="BUNDLE_DIR", help="The bundle folder (the one holding manifest.json).")
